#!/usr/bin/env python3
"""Measures how a Broker binary copes with many tenants: writes one event into
each of N tenants (moving one user from tenant to tenant), then reports the
database's size on disk after a clean shutdown, how long that shutdown took,
and how long a restart takes to serve again.

    scripts/tenants.py target/release/broker [tenants]

Used for the storage-layout figures in docs/operations.md ("Storage"); not
part of the test suite (the suite checks the same numbers for the current
build in tests/history.rs).
"""
import http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

binary = sys.argv[1]
tenants = int(sys.argv[2]) if len(sys.argv) > 2 else 10000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db, port):
    process = subprocess.Popen(
        [binary, f"--db={db}", f"--port={port}", "--ntp_servers=",
         "--admin_token=measure", "--jwt_secret=measure"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                return process, time.monotonic() - started
        except OSError:
            time.sleep(0.005)


def call(connection, method, path, body=None, headers=None):
    connection.request(method, path, json.dumps(body) if body is not None else None,
                       {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    assert response.status == 200, (path, response.status, payload)
    return json.loads(payload)


def size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


directory = tempfile.mkdtemp()
db, port = os.path.join(directory, "db"), free_port()
try:
    process, _ = start(db, port)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    admin = {"admin_token": "measure", "username": "mover"}
    call(connection, "POST", "/create_user", {**admin, "password": "pw", "tenant_name": "t0"})
    jwt = call(connection, "POST", "/login", {"username": "mover", "password": "pw"})["jwt"]
    auth = {"Authorization": f"Bearer {jwt}"}
    began = time.monotonic()
    for tenant in range(tenants):
        call(connection, "POST", "/update_user", {**admin, "tenant_name": f"tenant{tenant}"})
        call(connection, "POST", "/insert", {"event": "hello", "data": {"tenant": tenant}}, auth)
    written = time.monotonic() - began
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    shutdown = time.monotonic() - stopping
    on_disk = size(db)
    process, restart = start(db, port)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    print(json.dumps({"binary": binary, "tenants": tenants, "write_s": round(written, 1),
                      "shutdown_s": round(shutdown, 2), "disk_mb": round(on_disk / 1e6, 1),
                      "restart_s": round(restart, 2)}))
finally:
    shutil.rmtree(directory, ignore_errors=True)
