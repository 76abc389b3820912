package auth

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limiter bounds how many calls one identity makes per second, so that a
// caller (a compromised pod, a runaway script) cannot crowd out the
// groups the coordinator serves. Anonymous callers are not limited: they
// are indistinguishable (one bucket would throttle a 64-member group on
// one host), and a coordinator that admits them trusts its network.
type Limiter struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	l    *rate.Limiter
	used time.Time
}

// NewLimiter allows perSecond calls per identity with bursts of burst.
func NewLimiter(perSecond float64, burst int) *Limiter {
	return &Limiter{rate: rate.Limit(perSecond), burst: burst, buckets: map[string]*bucket{}}
}

// Allow takes one call of id from its bucket, or says to slow down.
func (l *Limiter) Allow(id *Identity) error {
	if id.Anonymous {
		return nil
	}
	now := time.Now()
	l.mu.Lock()
	b, ok := l.buckets[id.Name]
	if !ok {
		b = &bucket{l: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[id.Name] = b
	}
	b.used = now
	// Forget identities idle for a minute, at most once a minute: a full
	// bucket is what a new one would be.
	if now.Sub(l.swept) > time.Minute {
		for k, v := range l.buckets {
			if now.Sub(v.used) > time.Minute {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	l.mu.Unlock()
	if !b.l.AllowN(now, 1) {
		return status.Errorf(codes.ResourceExhausted, "%s: more than %.0f calls per second (burst %d); slow down", id.Name, float64(l.rate), l.burst)
	}
	return nil
}
