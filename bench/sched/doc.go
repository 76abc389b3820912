// Package sched benchmarks gang scheduling (issue #6 comparison 4, issue #9
// "Measure against it"): muster's scheduler against the stock
// kube-scheduler (default-scheduler, no gang semantics: the upper bound),
// scheduler-plugins' Coscheduling (coscheduling) and Kubernetes 1.37's own
// gang scheduling (upstream-gang), each alone against the same apiserver
// and the same 200 kwok nodes of 8 GPUs, with the same client QPS/burst.
//
// The benchmarks are in the package's tests:
//
//	MUSTER_BIN=$PWD/bin go test -run '^$' -bench . -benchtime 1x ./bench/sched
//
// MUSTER_BENCH_ANCHORS=default-scheduler (a comma-separated list) runs
// muster's scheduler against those anchors only, e.g. to profile one
// comparison (MUSTER_BENCH_SCHED_PROFILE, profile_test.go).
//
// They need bin/scheduler, bin/kube-scheduler (make kube-bins) and
// bin/coscheduling-scheduler (make coscheduling-bin), and take about four
// minutes on 2 cores, plus about nine for BenchmarkGangSchedulingAtScale
// (1000 nodes, 1000 gangs). Each run creates its pods first, then starts the
// scheduler under test and stops it after: no two schedulers ever run at
// once.
package sched
