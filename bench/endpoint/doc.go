// Package endpoint benchmarks the group's inference endpoint (issue #6,
// comparison 5): a small HTTP runtime behind muster's agent (the real
// bin/agent run of a group of one, with a real bin/coordinator), against
// calling the runtime directly (anchor "direct") and against Debian's nginx
// as a reverse proxy in front of the same runtime (anchor "nginx").
//
// Everything lives in the package's tests: `go test -run '^$' -bench .
// -benchtime 1x ./bench/endpoint` (make bench) runs it.
package endpoint
