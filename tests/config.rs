//! The example config parses, validates, and documents exactly the defaults.

use gochat::Config;

#[test]
fn example_config_is_the_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gochat.example.toml")).unwrap();
    let parsed = Config::parse(&text).expect("example parses");
    parsed.validate().expect("example validates");
    let as_value = |c: &Config| toml::Value::try_from(c).unwrap();
    assert_eq!(as_value(&parsed), as_value(&Config::default()), "example and defaults differ");
    // Every field is written out, not left to its default.
    let written: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(written, as_value(&Config::default()), "the example leaves out a field");
}

#[test]
fn only_client_listeners_face_the_network_by_default() {
    // gRPC between roles (gateway stats, logic, pushes) has no authentication: it must not be on
    // a public address unless an operator puts it there.
    let c = Config::default();
    let internal = [c.control.grpc_listen, c.gateway.grpc_listen];
    assert!(internal.iter().all(|a| a.ip().is_loopback()), "{internal:?}");
    // The REST API and the page are behind a proxy or load balancer in production.
    assert!(c.control.api_listen.ip().is_loopback() && c.control.site_listen.unwrap().ip().is_loopback());
    assert!(!c.gateway.ws_listen.ip().is_loopback(), "clients connect to the gateway directly");
    let admin = [c.gateway.admin_listen, c.control.admin_listen, c.worker.admin_listen];
    assert_eq!(admin, [None; 3], "metrics are served only when asked for");
}

#[test]
fn unknown_fields_and_bad_values_are_errors() {
    let err = Config::parse("[gateway]\nshardz = 2\n").unwrap_err().to_string();
    assert!(err.contains("shardz"), "{err}");
    let err = Config::parse("[gateway]\ndriver = \"kqueue\"\n").unwrap_err().to_string();
    assert!(err.contains("kqueue"), "{err}");
    let cfg = Config::parse("[gateway]\nping_after_secs = 90\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("ping_after_secs"));
    // io_uring validates where the kernel has it, and says why not elsewhere.
    let cfg = Config::parse("[gateway]\ndriver = \"io_uring\"\n").unwrap();
    match gochat_gateway::driver::uring::probe() {
        Ok(()) => cfg.validate().expect("io_uring available"),
        Err(why) => assert!(cfg.validate().unwrap_err().to_string().contains(&why)),
    }
    let cfg = Config::parse("[control]\nsite_listen = \"off\"\n[gateway]\ntcp_listen = \"off\"\n").unwrap();
    assert_eq!(
        (cfg.control.site_listen, cfg.gateway.tcp_listen),
        (None, None),
        "listeners can be turned off"
    );
    let again = Config::parse(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(
        (again.control.site_listen, again.gateway.tcp_listen),
        (None, None),
        "and stay off when written"
    );
    let err = Config::parse("[gateway]\ntcp_listen = \"nowhere\"\n").unwrap_err().to_string();
    assert!(err.contains("nowhere") && err.contains("off"), "{err}");
    // TLS settings go together, and a certificate that does not load is a config error.
    let cfg = Config::parse("[gateway]\nwss_listen = \"127.0.0.1:0\"\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("tls_cert") && err.contains("tls_key"), "{err}");
    let cfg = Config::parse("[gateway]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("wss_listen is off"));
    let cfg = Config::parse(
        "[gateway]\nwss_listen = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
    )
    .unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/c.pem") && err.contains("cannot read"), "{err}");
    let cfg = Config::parse("[control]\ntls_cert = \"c.pem\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("go together"));
    let cfg = Config::parse("[gateway]\nwss_listen = \"off\"\n").unwrap();
    assert_eq!(cfg.gateway.wss_listen, None);
    let cfg = Config::parse("[control]\nstate = \"redis\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("node_id"), "shared state needs a node number");
    let cfg = Config::parse("[control]\ndatabase = \"mysql://x\"\n").unwrap();
    assert!(cfg.validate().is_err());
    let cfg = Config::parse("[control]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\"]\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("trusted_proxies") && err.contains("proxy.local"), "{err}");
    let cfg = Config::parse("[control]\npush_burst = 0\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("push_burst"));
    let cfg = Config::parse("[control]\npush_per_second = 0\npush_burst = 0\n").unwrap();
    cfg.validate().expect("no burst needed without a limit");
}

#[test]
fn every_example_cluster_config_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match cfg.validate() {
                Ok(()) => {}
                // A build without etcd says so rather than failing later.
                Err(e) if !cfg!(feature = "etcd") && e.to_string().contains("--features etcd") => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 6, "two controls, two gateways, two workers");
}
