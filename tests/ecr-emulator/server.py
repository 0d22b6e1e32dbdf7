#!/usr/bin/env python3
"""ECR emulator for end-to-end tests: the full moto server, with
GetAuthorizationToken (ECR and ECR Public) answered by us.

Usage:
    python server.py --host 127.0.0.1 --port PORT \
        --control CONTROL_JSON_PATH --calls CALLS_PATH --log CALL_LOG_PATH

Everything except GetAuthorizationToken is served by moto's own WSGI
application (moto.moto_server.werkzeug_app.DomainDispatcherApplication), so
STS (AssumeRole, GetCallerIdentity, ...), ECR repositories, IAM etc. behave
exactly as in `moto_server`.  A small WSGI middleware sits in front of it and
takes over POST requests whose X-Amz-Target is one of

    AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken   (ECR)
    SpencerFrontendService.GetAuthorizationToken                 (ECR Public)

moto answers the former with a fixed token expiring in 2015, and has no ECR
Public backend at all.

GET /_emulator/health answers 200 "ok" once the server is serving.

Control file (JSON; absent or empty means defaults), re-read on every
GetAuthorizationToken call:
    ttl_seconds          token lifetime, default 43200
    fail                 "throttle" | "5xx" | "denied" | null
    count                how many calls fail after the control file content
                         last changed; absent/null = every call fails while
                         `fail` is set
    delay_seconds        sleep before answering, default 0
    allowed_access_keys  optional list; calls signed with any other access key
                         id fail with UnrecognizedClientException (such calls
                         do not use up `count`)
    fail_access_keys     optional list; `fail` applies only to calls signed
                         with these access key ids (an outage of one
                         identity); others are answered normally
The fault counter resets whenever the file content changes.  Write the file
atomically (temp file + rename) so a call never sees a half-written file; a
file that is not valid JSON is reported on stderr and treated as defaults.

Calls file: decimal count of GetAuthorizationToken calls answered so far,
including faulted ones; rewritten atomically before each response is sent.

Call log: one JSON line per GetAuthorizationToken call, written (and flushed)
before its response is sent.  Both files are reset when the server starts.
"""

import argparse
import base64
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

try:
    from moto.core import DEFAULT_ACCOUNT_ID
except ImportError:  # pragma: no cover - older/newer moto layouts
    DEFAULT_ACCOUNT_ID = "123456789012"

log = logging.getLogger("ecr-emulator")

HEALTH_PATH = "/_emulator/health"
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
# botocore's ecr-public model uses targetPrefix "SpencerFrontendService"; the
# shorter spelling is accepted too in case a hand-written client uses it.
ECR_PUBLIC_TARGETS = (
    "SpencerFrontendService.GetAuthorizationToken",
    "SpencerFrontService.GetAuthorizationToken",
)
JSON_11 = "application/x-amz-json-1.1"
DEFAULT_TTL_SECONDS = 43200

# fault kind -> (HTTP status, error type, message); "{action}" is filled in
FAULTS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "5xx": (500, "ServerException", "Internal server error"),
    "denied": (
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::{account}:user/testenv is not authorized to perform: "
        "{action} on resource: * because no identity-based policy allows the "
        "{action} action",
    ),
}
UNRECOGNIZED = (
    400,
    "UnrecognizedClientException",
    "The security token included in the request is invalid.",
)
MISSING_AUTH = (400, "MissingAuthenticationTokenException", "Missing Authentication Token")


def dns_suffix(region):
    """DNS suffix of the partition a region belongs to."""
    if region.startswith("cn-"):
        return "amazonaws.com.cn"
    return "amazonaws.com"


def parse_sigv4(environ):
    """(access_key_id, region, service) from a SigV4 Authorization header,
    or None if the request is not SigV4-signed in a form we understand."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if not auth.startswith("AWS4-HMAC-SHA256"):
        return None
    for part in auth[len("AWS4-HMAC-SHA256"):].split(","):
        part = part.strip()
        if part.startswith("Credential="):
            scope = part[len("Credential="):].split("/")
            # AKID/yyyymmdd/region/service/aws4_request
            if len(scope) == 5 and all(scope) and scope[4] == "aws4_request":
                return scope[0], scope[2], scope[3]
            return None
    return None


def json_response(status, body, extra_headers=None):
    headers = {
        "Content-Type": JSON_11,
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    headers.update(extra_headers or {})
    return Response(json.dumps(body), status=status, headers=headers)


def error_response(status, error_type, message):
    return json_response(
        status,
        {"__type": error_type, "message": message},
        {"x-amzn-ErrorType": error_type},
    )


class EmulatorState:
    """Control-file handling, fault budget, calls counter and call log.

    All mutation happens under one lock; the optional delay is slept outside
    it so concurrent calls are not serialised by it."""

    def __init__(self, control_path, calls_path, log_path):
        self.control_path = control_path
        self.calls_path = calls_path
        self.lock = threading.Lock()
        self.control_hash = None
        self.faulted_since_change = 0
        self.calls = 0
        self.password_seq = itertools.count(1)
        self._write_calls()
        self.log_file = open(log_path, "w", encoding="utf-8")

    # -- control file -------------------------------------------------------
    def _read_control(self):
        try:
            with open(self.control_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        digest = hashlib.sha256(raw).hexdigest()
        if not raw.strip():
            return digest, {}
        try:
            control = json.loads(raw)
        except ValueError as exc:
            log.error("control file %s is not valid JSON (%s); using defaults",
                      self.control_path, exc)
            return digest, {}
        if not isinstance(control, dict):
            log.error("control file %s is not a JSON object; using defaults",
                      self.control_path)
            return digest, {}
        return digest, control

    def decide(self, access_key_id):
        """Read the control file and decide this call's outcome.

        Returns (outcome, ttl_seconds, delay_seconds)."""
        with self.lock:
            digest, control = self._read_control()
            if digest != self.control_hash:
                if self.control_hash is not None:
                    log.info("control file changed: %s", json.dumps(control))
                self.control_hash = digest
                self.faulted_since_change = 0

            ttl = control.get("ttl_seconds")
            ttl = DEFAULT_TTL_SECONDS if ttl is None else float(ttl)
            delay = float(control.get("delay_seconds") or 0)

            allowed = control.get("allowed_access_keys")
            if allowed is not None and access_key_id not in allowed:
                return "unrecognized", ttl, delay

            fail = control.get("fail")
            if fail is not None and fail not in FAULTS:
                log.error("control file: unknown fail kind %r ignored", fail)
                fail = None
            only = control.get("fail_access_keys")
            if fail is not None and only is not None and access_key_id not in only:
                fail = None
            if fail is not None:
                count = control.get("count")
                if count is None or self.faulted_since_change < int(count):
                    self.faulted_since_change += 1
                    return fail, ttl, delay
            return "ok", ttl, delay

    def new_password(self):
        return f"emu-{uuid.uuid4().hex}-{next(self.password_seq)}"

    # -- bookkeeping --------------------------------------------------------
    def _write_calls(self):
        directory = os.path.dirname(os.path.abspath(self.calls_path))
        fd, tmp = tempfile.mkstemp(prefix=".calls-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(f"{self.calls}\n")
            os.replace(tmp, self.calls_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def record(self, entry):
        """Count one answered call and append its log line."""
        with self.lock:
            self.calls += 1
            self._write_calls()
            self.log_file.write(json.dumps(entry, sort_keys=True) + "\n")
            self.log_file.flush()


class EcrAuthMiddleware:
    """WSGI middleware in front of moto's DomainDispatcherApplication."""

    def __init__(self, moto_app, state):
        self.moto_app = moto_app
        self.state = state

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            resp = Response("ok", mimetype="text/plain")
            return resp(environ, start_response)
        if method == "POST":
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target == ECR_TARGET:
                return self.get_authorization_token(environ, start_response, public=False)
            if target in ECR_PUBLIC_TARGETS:
                return self.get_authorization_token(environ, start_response, public=True)
        return self.moto_app(environ, start_response)

    def get_authorization_token(self, environ, start_response, public):
        try:
            resp = self._get_authorization_token(Request(environ), public)
        except Exception:  # never let a bug here kill the connection silently
            log.exception("GetAuthorizationToken handler failed")
            resp = error_response(500, "ServerException", "emulator internal error")
        return resp(environ, start_response)

    def _get_authorization_token(self, request, public):
        state = self.state
        service = "ecr-public" if public else "ecr"
        action = f"{service}:GetAuthorizationToken"
        body = request.get_data(cache=False)
        signed = parse_sigv4(request.environ)
        access_key_id, region = (signed[0], signed[1]) if signed else (None, None)

        try:
            params = json.loads(body) if body.strip() else {}
        except ValueError:
            params = None
        if not isinstance(params, dict):
            params = {}  # SDKs always send an object; be lenient with curl
        registry_ids = params.get("registryIds")
        if not (isinstance(registry_ids, list) and registry_ids
                and all(isinstance(r, str) for r in registry_ids)):
            registry_ids = [DEFAULT_ACCOUNT_ID]

        if signed is None:
            outcome, status_err = "unrecognized", MISSING_AUTH
            ttl = delay = 0
        else:
            outcome, ttl, delay = state.decide(access_key_id)
            status_err = None
        if delay > 0:
            time.sleep(delay)

        entry = {
            "time": time.time(),
            "service": service,
            "region": region,
            "access_key_id": access_key_id,
            "outcome": outcome,
        }
        if outcome == "ok":
            password = state.new_password()
            token = base64.b64encode(f"AWS:{password}".encode()).decode()
            expires_at = round(time.time() + ttl, 3)
            entry["expires_at"] = expires_at
            entry["password_sha256"] = hashlib.sha256(password.encode()).hexdigest()
            if public:
                payload = {"authorizationData": {
                    "authorizationToken": token, "expiresAt": expires_at}}
            else:
                suffix = dns_suffix(region)
                payload = {"authorizationData": [
                    {
                        "authorizationToken": token,
                        "expiresAt": expires_at,
                        "proxyEndpoint": f"https://{rid}.dkr.ecr.{region}.{suffix}",
                    }
                    for rid in registry_ids
                ]}
            resp = json_response(200, payload)
        else:
            if status_err is None:
                status_err = UNRECOGNIZED if outcome == "unrecognized" else FAULTS[outcome]
            status, error_type, message = status_err
            message = message.format(account=DEFAULT_ACCOUNT_ID, action=action)
            entry["error_type"] = error_type
            resp = error_response(status, error_type, message)

        state.record(entry)
        log.info("%s GetAuthorizationToken region=%s key=%s -> %s",
                 service, region, access_key_id, entry["outcome"])
        return resp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", required=True, help="control JSON file path")
    parser.add_argument("--calls", required=True, help="calls counter file path")
    parser.add_argument("--log", required=True, help="call log (JSON lines) path")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # moto sends some requests to itself through this variable
    os.environ.setdefault("MOTO_PORT", str(args.port))

    state = EmulatorState(args.control, args.calls, args.log)
    app = EcrAuthMiddleware(DomainDispatcherApplication(create_backend_app), state)
    server = make_server(args.host, args.port, app, threaded=True,
                         request_handler=MotoRequestHandler)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("ECR emulator (moto) serving on http://%s:%d", args.host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log.info("ECR emulator stopped")


if __name__ == "__main__":
    main()
