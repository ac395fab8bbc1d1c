//go:build race

package worker_test

// raceDetector is true when the tests run with -race.
const raceDetector = true
