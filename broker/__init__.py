"""The host side: LM clients, usage accounting and the gRPC server runners call back into."""
