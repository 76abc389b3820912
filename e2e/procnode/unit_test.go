package procnode

import (
	"bytes"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
)

func TestImageRepository(t *testing.T) {
	for image, want := range map[string]string{
		"muster/agent":                       "muster/agent",
		"muster/agent:dev":                   "muster/agent",
		"docker.io/muster/agent:v1":          "muster/agent",
		"muster/agent@sha256:abc":            "muster/agent",
		"registry:5000/muster/agent:1":       "registry:5000/muster/agent",
		"registry:5000/muster/agent":         "registry:5000/muster/agent",
		"busybox":                            "busybox",
		"docker.io/library/busybox:1.36":     "busybox",
		"ghcr.io/muster-dev/muster/agent:v2": "ghcr.io/muster-dev/muster/agent",
	} {
		if got := imageRepository(image); got != want {
			t.Errorf("imageRepository(%q) = %q, want %q", image, got, want)
		}
	}
	p := &provider{providerConfig: providerConfig{cfg: Config{AgentImage: "muster/agent:latest"}}}
	if !p.isAgentImage("muster/agent:dev") || p.isAgentImage("muster/agent-extra:dev") || p.isAgentImage("other/agent") {
		t.Error("isAgentImage matches the wrong images")
	}
}

func TestTranslate(t *testing.T) {
	mt := mountTable{
		{"/muster/bin/sub", "/host/sub"}, // longest first, as mountTable sorts them
		{"/muster/bin", "/host/bin"},
		{"/data", "/host/data"},
	}
	for in, want := range map[string]string{
		"/muster/bin/agent":       "/host/bin/agent",
		"/muster/bin":             "/host/bin",
		"/muster/bin/sub/x":       "/host/sub/x",
		"/muster/binary":          "/muster/binary",
		"/data/":                  "/host/data/",
		"--out=/data/x":           "--out=/data/x",
		"relative/muster/bin/foo": "relative/muster/bin/foo",
		"":                        "",
	} {
		if got := mt.translate(in); got != want {
			t.Errorf("translate(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIPPool(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/24", "127.0.0.0/30", "0.0.0.0/0", "::1/128", "nonsense", "126.0.0.0/7"} {
		if _, err := newIPPool(bad, false); err == nil {
			t.Errorf("newIPPool(%q, false) accepted", bad)
		}
	}
	p, err := newIPPool("127.0.0.0/29", false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		a, err := p.allocate()
		if err != nil {
			break
		}
		got = append(got, a.String())
	}
	// Not the network address, not 127.0.0.1, not the last address.
	if want := "127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5 127.0.0.6"; strings.Join(got, " ") != want {
		t.Errorf("allocated %v, want %s", got, want)
	}
	p.release(netip.MustParseAddr("127.0.0.4"))
	if a, err := p.allocate(); err != nil || a.String() != "127.0.0.4" {
		t.Errorf("after release: %v, %v", a, err)
	}

	p, _ = newIPPool("127.10.0.0/16", false)
	a, _ := p.allocate()
	b, _ := p.allocate()
	p.release(a)
	c, _ := p.allocate()
	if a.String() != "127.10.0.1" || b.String() != "127.10.0.2" || c.String() != "127.10.0.3" {
		t.Errorf("allocated %s %s %s: want round robin from 127.10.0.1", a, b, c)
	}
}

func TestCopyCRILog(t *testing.T) {
	long := strings.Repeat("x", maxLogLine+10)
	in := "one\n\ntwo\n" + long + "\nlast-no-newline"
	var out bytes.Buffer
	var mu sync.Mutex
	copyCRILog(strings.NewReader(in), &out, &mu, "stderr")
	rec := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stderr ([FP]) (.*)$`)
	var tags, texts []string
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		m := rec.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("not a CRI log record: %q", l)
		}
		tags, texts = append(tags, m[1]), append(texts, m[2])
	}
	if want := "F F F P F P"; strings.Join(tags, " ") != want {
		t.Errorf("tags %v, want %s", tags, want)
	}
	if got := texts[3] + texts[4]; got != long {
		t.Errorf("long line split into %d+%d bytes, rejoined wrong", len(texts[3]), len(texts[4]))
	}
	if texts[0] != "one" || texts[1] != "" || texts[2] != "two" || texts[5] != "last-no-newline" {
		t.Errorf("texts %q", texts)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"", "localhost", "127.0.0.1", "127.10.3.4", "::1"} {
		if err := loopbackOnly(ok); err != nil {
			t.Errorf("loopbackOnly(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1", "example.com", "192.168.1.1", "0.0.0.0"} {
		if err := loopbackOnly(bad); err == nil {
			t.Errorf("loopbackOnly(%q) allowed", bad)
		}
	}
}
