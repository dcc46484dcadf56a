#!/usr/bin/env python3
"""What validate.sh checks in the rendered deploy files beyond their schemas.

usage: validate.py k8s BASE.yaml IO_URING.yaml INGRESS.yaml CHANGED.yaml RETAGGED.yaml
       validate.py compose COMPOSE.json PROMETHEUS.yml GRAFANA_DATASOURCES.yml
"""
import json
import sys

import yaml

WORKLOADS = ("Deployment", "StatefulSet")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def k8s(base, io_uring, ingress, changed, retagged):
    base, io_uring, ingress = load(base), load(io_uring), load(ingress)
    changed, retagged = load(changed), load(retagged)
    config_maps = by_kind(base, "ConfigMap")
    roles = workloads(base)
    check(set(roles) == {"gochat-control", "gochat-gateway", "gochat-worker"}, f"workloads: {sorted(roles)}")
    for name, w in roles.items():
        pod = w["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        # Probes on the HTTP health endpoints of admin_listen, for every role.
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        check(ports.get("admin") == 9100, f"{name}: no admin port 9100: {ports}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            got = c.get(probe, {}).get("httpGet")
            check(got == {"path": path, "port": "admin"}, f"{name}: {probe} is {c.get(probe)}")
        # Metrics on every role, with the annotations a Prometheus scrape config looks for.
        notes = pod["metadata"].get("annotations", {})
        want = {"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
        check(want.items() <= notes.items(), f"{name}: scrape annotations {notes}")
        # The config is the generated ConfigMap (its name carries the checksum of its content).
        (volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
        cm = volume["configMap"]["name"]
        check(cm in config_maps and cm.startswith(name + "-"), f"{name}: mounts {cm}, not a generated config")
        check("/etc/gochat/gochat.toml" in " ".join(c.get("command", []) + c.get("args", [])),
              f"{name}: does not read /etc/gochat/gochat.toml")
        # Ids from the pod, through the environment.
        section = name.removeprefix("gochat-")
        check(env(c).get(f"GOCHAT_{section.upper()}__ID") == "$(POD_NAME)", f"{name}: id not from the pod name")
        check(c["image"] == "gochat-rs:latest", f"{name}: image {c['image']}")
        # Every role under RuntimeDefault in the base: it runs on any cluster.
        profile = pod["spec"]["securityContext"]["seccompProfile"]
        check(profile == {"type": "RuntimeDefault"}, f"{name}: seccomp {profile} in the base")
    check("trusted_proxies" not in "\n".join(
        line for line in config_maps[next(n for n in config_maps if n.startswith("gochat-control-"))]["data"]["gochat.toml"].splitlines()
        if not line.lstrip().startswith("#")), "the base control trusts proxies")

    # io_uring overlay: the gateways alone under the Localhost profile.
    for name, w in workloads(io_uring).items():
        profile = w["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
        want = {"type": "Localhost", "localhostProfile": "gochat-io_uring.json"} if name == "gochat-gateway" \
            else {"type": "RuntimeDefault"}
        check(profile == want, f"io_uring overlay: {name} runs under {profile}")

    # A config change rolls the pods of that role (a new ConfigMap name in its pod template),
    # and only that role's.
    for name, w in workloads(changed).items():
        same = w["spec"]["template"] == roles[name]["spec"]["template"]
        check(same != (name == "gochat-gateway"), f"changing gateway.toml: {name}'s pod template "
              f"{'did not change' if same else 'changed'}")
    # The image is set in one place (kustomization images:) for every role.
    images = {w["spec"]["template"]["spec"]["containers"][0]["image"] for w in workloads(retagged).values()}
    check(images == {"registry.example.com/gochat-rs:1.2.3"}, f"images after `images:`: {images}")

    # Ingress overlay: page, API and socket on one host; control told so, and trusting only what
    # the NetworkPolicy lets reach its REST API.
    (ing,) = by_kind(ingress, "Ingress").values()
    (rule,) = ing["spec"]["rules"]
    routes = {p["path"]: (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
              for p in rule["http"]["paths"]}
    check(routes == {"/api": ("gochat-control", "api"), "/ws": ("gochat-gateway-public", "ws"),
                     "/": ("gochat-control", "page")}, f"ingress routes {routes}")
    services = by_kind(ingress, "Service")
    for path, (svc, port) in routes.items():
        check(port in [p["name"] for p in services[svc]["spec"]["ports"]], f"ingress {path}: {svc} has no port {port}")
    control = workloads(ingress)["gochat-control"]["spec"]["template"]["spec"]["containers"][0]
    e = env(control)
    check(e.get("GOCHAT_CONTROL__SITE_API_URL") == "/api" and e.get("GOCHAT_CONTROL__SITE_WS_URL") == "/ws",
          f"ingress: the page is not told the paths: {e}")
    check(e.get("GOCHAT_CONTROL__ID") == "$(POD_NAME)", "ingress: the patch replaced the base's variables")
    (policy,) = by_kind(ingress, "NetworkPolicy").values()
    api_from = [r.get("from") for r in policy["spec"]["ingress"] if {"port": "api"} in r.get("ports", [])]
    check(api_from and all(api_from), f"ingress: the REST API is open to any pod: {api_from}")
    print(f"k8s: base and overlays checked ({len(base)} base resources)")


def compose(path, prometheus, datasources):
    with open(path) as f:
        c = json.load(f)
    services = c["services"]
    gochat = {n for n, s in services.items() if s["image"] == "gochat-rs:latest"}
    check(gochat == {"control-1", "control-2", "control-ready", "gateway-1", "gateway-2", "worker-1",
                     "worker-2"}, f"services on the gochat image: {sorted(gochat)}")
    built = [n for n, s in services.items() if "build" in s]
    check(built == ["control-1"], f"one image build, by control-1: {built}")
    for name, s in services.items():
        if name != "control-ready":
            check(s.get("healthcheck", {}).get("test"), f"{name}: no health check")
        if name in gochat and name != "control-ready":
            check(s["healthcheck"]["test"] == ["CMD", "gochat", "health", "http://127.0.0.1:9100/readyz"],
                  f"{name}: health check {s['healthcheck']['test']}")
    for g in ("gateway-1", "gateway-2"):
        deps = services[g]["depends_on"]
        check(not {"control-1", "control-2"} & set(deps), f"{g} waits for a given control: {deps}")
        check(deps["control-ready"]["condition"] == "service_completed_successfully", f"{g}: {deps}")
    ready = " ".join(services["control-ready"]["command"])
    check("control-1:9100/readyz ||" in ready and "control-2:9100/readyz" in ready, f"control-ready: {ready}")
    check(services["control-ready"]["restart"] == "no", "control-ready restarts")
    for n in ("prometheus", "grafana"):
        check(n in services, f"no {n} service")
    # Prometheus scrapes every gochat role's admin_listen; Grafana reads that Prometheus.
    with open(prometheus) as f:
        scrape = yaml.safe_load(f)["scrape_configs"]
    targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
    check(targets == {f"{n}:9100" for n in gochat - {"control-ready"}}, f"prometheus targets {sorted(targets)}")
    with open(datasources) as f:
        (source,) = yaml.safe_load(f)["datasources"]
    check(source["url"] == "http://prometheus:9090" and source["isDefault"], f"grafana data source {source}")
    # Grafana's dashboard provider reads the folder the dashboard is mounted in.
    with open(datasources.replace("datasources.yml", "dashboards.yml")) as f:
        (provider,) = yaml.safe_load(f)["providers"]
    mounts = {v["source"].rsplit("/", 2)[-2] + "/" + v["source"].rsplit("/", 1)[-1]: v["target"]
              for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    dashboard = mounts.get("grafana/gochat.json", "")
    check(dashboard.rsplit("/", 1)[0] == provider["options"]["path"],
          f"grafana: the dashboard is mounted at {dashboard}, the provider reads {provider['options']['path']}")
    for kind in ("datasources", "dashboards"):
        check(any(t.startswith(f"/etc/grafana/provisioning/{kind}/") for t in mounts.values()),
              f"grafana: nothing provisions its {kind}: {mounts}")
    print(f"compose: {len(services)} services checked")


if __name__ == "__main__":
    try:
        {"k8s": k8s, "compose": compose}[sys.argv[1]](*sys.argv[2:])
    except AssertionError as e:
        sys.exit(f"FAILED: {e}")
