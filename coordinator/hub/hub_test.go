package hub_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/podapi"
)

// TestCreateOnceBurst: a burst of first joins creates the group once; when
// that creation fails, one of the callers waiting tries in its place, and
// every caller returns once the view has the state.
func TestCreateOnceBurst(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	reg := hub.NewRegistry(co.Store, slog.New(slog.DiscardHandler), time.Minute)
	t.Cleanup(reg.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, failFirst := range []bool{false, true} {
		name := "burst"
		if failFirst {
			name = "burst-first-fails"
		}
		k := podapi.Key{Namespace: "ns", Name: name}
		h, err := reg.Acquire(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		const callers = 200
		var (
			calls  atomic.Int32
			failed atomic.Int32
			wg     sync.WaitGroup
			start  = make(chan struct{})
			errs   = make(chan error, callers)
		)
		errRefused := errors.New("refused on purpose")
		create := func() (int64, error) {
			if calls.Add(1) == 1 && failFirst {
				// Hold the others back long enough that they queue.
				time.Sleep(50 * time.Millisecond)
				return 0, errRefused
			}
			_, rev, err := co.Store.CreateState(ctx, k, rendezvous.NewState(4, "torchrun", 3))
			return rev, err
		}
		for range callers {
			wg.Go(func() {
				<-start
				err := h.CreateOnce(ctx, create)
				if errors.Is(err, errRefused) {
					failed.Add(1)
					return
				}
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("%s: CreateOnce: %v", name, err)
			}
		}
		want := int32(1)
		if failFirst {
			want = 2
		}
		if got := calls.Load(); got != want {
			t.Errorf("%s: create called %d times, want %d", name, got, want)
		}
		if want, got := map[bool]int32{false: 0, true: 1}[failFirst], failed.Load(); got != want {
			t.Errorf("%s: %d callers got the refusal, want %d (only the one whose creation failed)", name, got, want)
		}
		var size int
		h.Read(func(v *rendezvous.View) {
			if v.State != nil {
				size = v.State.Size
			}
		})
		if size != 4 {
			t.Errorf("%s: view after CreateOnce has state of size %d, want 4", name, size)
		}
		h.Release()
	}
}
