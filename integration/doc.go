// Package integration holds Flinger's tests across components: in-process
// tests of a whole lab on an embedded NATS server, and benchmarks that
// measure Flinger against raw JetStream on the same server.
package integration
