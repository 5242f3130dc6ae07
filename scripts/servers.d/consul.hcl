# Consul dev agent for the test suite: loopback only, no default ports, in-memory state (-dev).
# scripts/servers copies this file to .servers/consul/consul.hcl and starts `consul agent -dev -config-file=…`.
node_name            = "kvtest"
datacenter           = "dc1"
bind_addr            = "127.0.0.1"
client_addr          = "127.0.0.1"
advertise_addr       = "127.0.0.1"
disable_update_check = true
log_level            = "WARN"
session_ttl_min      = "1s"      # default 10s; TTL/lock tests need short session TTLs
# Every test client connects from 127.0.0.1, so the default 200 connections per client address
# counts the whole test run as one client (a benchmark at concurrency 64 with a raw client
# beside ours and their idle pools reaches it).
limits {
  http_max_conns_per_client = 4096
}
ports {
  http     = 28500
  https    = -1
  dns      = -1
  grpc     = -1
  grpc_tls = -1
  server   = 28300
  serf_lan = 28301
  serf_wan = 28302
}
