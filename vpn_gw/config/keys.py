"""Which keys each table accepts, and the hints for a key written in the wrong table."""
from __future__ import annotations

from vpn_gw.pools.pg_settings import PG_POOL_KEYS

TOP_KEYS = ("gateway", "connection", "pool", "ddns", "radius")
DDNS_KEYS = ("interface", "names", "method", "families", "update_period", "server", "port", "zone",
             "tsig_name", "tsig_secret", "tsig_algorithm", "ttl", "scheme", "path", "user", "password",
             "ca_file", "user_agent", "mode", "fleet_pool")
GATEWAY_KEYS = ("control_socket", "listen", "ike_port", "natt_port", "log_level", "log_format",
                "half_open_limit", "cookie_threshold", "dataplane", "path_mtu", "keepalive_interval",
                "xfrm_fragmentation", "xfrm_nfqueue", "xfrm_nfqueue_fail", "offload", "tun_tso", "holdoff_us",
                "outbound_worker",
                "retransmit_timeout", "retransmit_base", "retransmit_tries", "dns_servers", "dns_port",
                "dns_timeout", "dns_min_ttl", "dns_max_ttl", "tcp_port", "metrics_listen",
                "tcp_max_connections", "tcp_max_per_source", "tcp_idle_timeout", "tcp_max_unauth_frame",
                "tcp_max_buffered", "half_open_per_address", "new_sa_rate_per_address",
                "new_sa_burst_per_address", "cookie_secret_lifetime", "cookie_grace", "fragment_budget_per_sa",
                "fragment_budget_total", "crypto_workers")
CONNECTION_KEYS = (
    "name", "local_addrs", "remote_addrs", "local_id", "remote_id", "auth", "remote_auth",
    "users_file", "eap_identity", "eap_password", "psk", "certs",
    "private_key", "cacerts", "ike_proposals", "start_action", "dpd_delay", "dpd_action",
    "rekey_time", "reauth_time", "over_time", "rand_time", "encap", "mobike", "address_adoption", "fragmentation",
    "fragment_size", "keyingtries", "if_id", "interface", "routes", "pools", "vips", "dns_file", "transport",
    "tcp_port", "ppk_id", "ppk", "ppk_required", "child",
)
CHILD_KEYS = (
    "name", "local_ts", "remote_ts", "esp_proposals", "mode", "start_action", "dpd_action",
    "rekey_time", "life_time", "rand_time", "rekey_bytes", "life_bytes", "rekey_packets",
    "life_packets", "replay_window",
)

_CONN_ONLY_HINT = {k: f"'{k}' is a connection key; keys written after [[connection.child]] belong "
                      f"to that child, so move it above the first [[connection.child]]"
                   for k in CONNECTION_KEYS if k not in CHILD_KEYS}
_GW_HINT = {k: f"'{k}' belongs in [gateway]" for k in GATEWAY_KEYS}
_CONN_HINT = {k: f"'{k}' belongs in a [[connection]] table" for k in CONNECTION_KEYS}
_CHILD_HINT = {k: f"'{k}' belongs in a [[connection.child]] table" for k in CHILD_KEYS
               if k not in CONNECTION_KEYS}
POOL_KEYS = ("name", "addrs", "dns", "subnets", "lease_file", "masquerade") + PG_POOL_KEYS
_POOL_HINT = {k: f"'{k}' belongs in a [[pool]] table (a connection refers to pools by name "
                 f"with pools = [...])" for k in POOL_KEYS if k != "name"}
