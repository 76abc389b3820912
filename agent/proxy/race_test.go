//go:build race

package proxy

// raceEnabled: the race detector makes sync.Pool drop a share of what is
// put back, on purpose, so allocation counts do not hold under it.
const raceEnabled = true
