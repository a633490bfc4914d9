"""JSON-RPC 2.0: the transport-free core, the OpenRPC document and the protocol's methods."""
