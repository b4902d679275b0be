//go:build race

package sim

// raceEnabled: under the race detector the sweep runs a reduced grid. The
// simulation is one goroutine, so the detector finds nothing in it that the
// concurrent tests do not cover, and it slows each Redis round trip's Go
// side several times; the full grid runs without it (make test).
const raceEnabled = true
