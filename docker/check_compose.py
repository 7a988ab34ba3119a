#!/usr/bin/env python3
"""Static check of docker/docker-compose.yml (no Docker engine needed): the structure the docs
promise. Exit status 0 when every check passes; prints one line per check."""
import os
import re
import sys

import yaml

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "docker-compose.yml"), encoding="utf-8") as f:
    doc = yaml.safe_load(f)

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


services = doc.get("services", {})
check(set(services) == {"openbao", "postgres", "postgres-exporter"}, "services are exactly openbao, postgres and postgres-exporter")
bao, pg, mon = services.get("openbao", {}), services.get("postgres", {}), services.get("postgres-exporter", {})
check("ports" not in bao, "OpenBao publishes no port (compose network only)")
check(all(str(p).startswith("127.0.0.1:") for p in pg.get("ports", [])), "PostgreSQL is published on 127.0.0.1 only")
check(all(s.get("healthcheck", {}).get("test") for s in services.values()), "every service has a health check")
check(all(str(p).startswith("127.0.0.1:") for p in mon.get("ports", [])), "the exporter is published on 127.0.0.1 only")
check(mon.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy", "the exporter waits for a healthy postgres")
menv = mon.get("environment", {})
check(menv.get("DATA_SOURCE_USER") == "monitor" and "DATA_SOURCE_PASS_FILE" in menv, "the exporter logs in as monitor with a password file")
check(any(v.endswith(":/etc/pg_credcrypt/queries.yaml:ro") and v.startswith("./prometheus/queries.yaml") for v in mon.get("volumes", [])), "the exporter reads docker/prometheus/queries.yaml")
check(pg.get("depends_on", {}).get("openbao", {}).get("condition") == "service_healthy", "postgres waits for a healthy OpenBao")
check("-config=/run/secrets/openbao_hcl" in bao.get("command", []), "OpenBao reads its configuration from a secret file")
declared = doc.get("secrets", {})
used = set(bao.get("secrets", [])) | set(pg.get("secrets", [])) | set(mon.get("secrets", []))
check(used <= set(declared), "every secret a service uses is declared")
check(all("file" in v and v["file"].startswith("./secrets/") for v in declared.values()), "secrets are files under docker/secrets (made by gen-secrets.sh)")
gen = open(os.path.join(here, "gen-secrets.sh"), encoding="utf-8").read()
for name, spec in declared.items():
    base = os.path.basename(spec["file"])
    check(base in gen or base.replace("pg_", "").split("_password")[0] in gen, f"gen-secrets.sh creates {base}")
env = pg.get("environment", {})
check(not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), "no password in the environment (only *_FILE)")
check(not any(re.search(r"(token|secret|password)\s*[:=]", str(v), re.I) for v in env.values()), "no secret value inline")
build = pg.get("build", {})
check(os.path.exists(os.path.join(here, "..", build.get("dockerfile", ""))), "the Dockerfile exists")
check(str(build.get("args", {}).get("PG_MAJOR")) in {"15", "16", "17", "18"}, "the PostgreSQL major version is a build argument")
conf = open(os.path.join(here, "postgres", "credcrypt.conf"), encoding="utf-8").read()
check("/run/secrets/bao_secret_id" in conf and "bao_secret_id" in pg.get("secrets", []), "the worker's AppRole secret id is a mounted file")
check(re.search(r"credcrypt\.bao_addr\s*=\s*'http://openbao:8200'", conf) is not None, "Postgres points at the openbao service")
check(set(doc.get("networks", {})) == {"credcrypt"}, "one private network")
sys.exit(1 if failures else 0)
