package xds

import "google.golang.org/grpc"

// ServerOptions are the gRPC server settings for a port that carries discovery
// streams: many long-lived connections, idle almost all of the time. Each connection
// keeps its own read buffer, so it is small (1 KiB: ACKs are small; measured against
// none and 2-8 KiB in docs/performance.md); the write buffer is taken from a shared
// pool only while a response is written instead of being held by every connection.
// Responses (certificates, bundles, listeners) are a few KiB, so small buffers cost
// nothing in throughput.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(1 << 10),
		grpc.WriteBufferSize(8 << 10),
	}
}
