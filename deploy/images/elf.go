package images

import (
	"debug/elf"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// elfMachine is the ELF machine of a platform's binaries.
func elfMachine(p v1.Platform) (elf.Machine, error) {
	if p.OS == "linux" {
		switch p.Architecture {
		case "amd64":
			return elf.EM_X86_64, nil
		case "arm64":
			return elf.EM_AARCH64, nil
		}
	}
	return 0, fmt.Errorf("images: platform %q: only linux/amd64 and linux/arm64 are built", p.String())
}

// CheckStatic says why the file at path is not a static executable for p:
// an empty base has no dynamic loader and no libc, so a binary that needs
// either (an ELF interpreter, a DT_NEEDED library) would not start.
func CheckStatic(path string, p v1.Platform) error {
	want, err := elfMachine(p)
	if err != nil {
		return err
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("%s: built for %s, not %s (%s)", path, f.Machine, want, p)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s: ELF type %s, not an executable", path, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked (it asks for an ELF interpreter): build with CGO_ENABLED=0", path)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s: needs shared libraries %v: build with CGO_ENABLED=0", path, libs)
	}
	return nil
}
