"""Tests for the ECR emulator (server.py), run against a real server process.

    python3 -m venv /tmp/emu-venv
    /tmp/emu-venv/bin/pip install -r tests/ecr-emulator/requirements.txt pytest
    /tmp/emu-venv/bin/python -m pytest -q tests/ecr-emulator
"""

import base64
import concurrent.futures
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
SERVER = HERE / "server.py"
ACCOUNT = "123456789012"
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
START_DEADLINE = 60.0
# exactly one HTTP request per API call, so call counts are exact
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, headers=None, timeout=5.0):
    """(status, body text) of a plain HTTP request, errors included."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Emulator:
    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = workdir / "control.json"
        self.calls = workdir / "calls"
        self.log = workdir / "calls.log"
        self.stderr_path = workdir / "server.stderr"
        self.proc = None

    def start(self):
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", "127.0.0.1",
             "--port", str(self.port), "--control", str(self.control),
             "--calls", str(self.calls), "--log", str(self.log)],
            stdout=self.stderr, stderr=self.stderr,
        )
        deadline = time.monotonic() + START_DEADLINE
        while True:
            assert self.proc.poll() is None, f"server exited early:\n{self.server_output()}"
            try:
                if http(self.url + "/_emulator/health", timeout=1.0) == (200, "ok"):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"server not healthy after {START_DEADLINE}s:\n{self.server_output()}")
            time.sleep(0.05)  # polling interval, bounded by the deadline

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stderr.close()

    def server_output(self):
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def set_control(self, content):
        """Write the control file atomically (dict -> JSON, str as is)."""
        text = content if isinstance(content, str) else json.dumps(content)
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.control)

    def calls_count(self):
        text = self.calls.read_text()
        assert text.endswith("\n")
        return int(text)

    def log_entries(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def client(self, service="ecr", region="us-east-1", key="AKIAEMULATORTEST", config=NO_RETRY):
        return boto3.client(
            service, region_name=region, endpoint_url=self.url,
            aws_access_key_id=key, aws_secret_access_key="dummy-secret",
            config=config,
        )


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    server = Emulator(tmp_path_factory.mktemp("ecr-emulator"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def reset_control(emu):
    emu.set_control({})
    yield
    emu.set_control({})
    assert emu.proc.poll() is None, f"server died:\n{emu.server_output()}"


def decode_password(auth_token):
    user, _, password = base64.b64decode(auth_token).decode().partition(":")
    assert user == "AWS"
    return password


def test_health(emu):
    assert http(emu.url + "/_emulator/health") == (200, "ok")


def test_files_created_at_start(emu):
    assert emu.calls.read_text().strip().isdigit()
    assert emu.log.exists()


@pytest.mark.parametrize("region,endpoint", [
    ("us-east-1", f"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"),
    ("eu-west-1", f"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"),
    ("cn-north-1", f"https://{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn"),
])
def test_token(emu, region, endpoint):
    before = emu.calls_count()
    now = time.time()
    resp = emu.client(region=region).get_authorization_token()
    data = resp["authorizationData"]
    assert len(data) == 1
    password = decode_password(data[0]["authorizationToken"])
    assert password.startswith("emu-")
    assert abs(data[0]["expiresAt"].timestamp() - (now + 43200)) < 30
    assert data[0]["proxyEndpoint"] == endpoint
    assert emu.calls_count() == before + 1

    entry = emu.log_entries()[-1]
    assert entry["service"] == "ecr"
    assert entry["region"] == region
    assert entry["access_key_id"] == "AKIAEMULATORTEST"
    assert entry["outcome"] == "ok"
    assert entry["password_sha256"] == hashlib.sha256(password.encode()).hexdigest()
    assert abs(entry["expires_at"] - data[0]["expiresAt"].timestamp()) < 0.01
    assert abs(entry["time"] - now) < 30
    assert password not in emu.log.read_text()


def test_raw_response_shape(emu):
    # botocore parses leniently; check the wire format a Rust SDK would see
    captured = {}

    def grab(http_response, **kwargs):
        captured["status"] = http_response.status_code
        captured["headers"] = dict(http_response.headers)
        captured["body"] = http_response.content

    client = emu.client()
    client.meta.events.register("after-call.ecr.GetAuthorizationToken", grab)
    client.get_authorization_token()
    assert captured["status"] == 200
    assert captured["headers"]["Content-Type"] == "application/x-amz-json-1.1"
    body = json.loads(captured["body"])
    assert list(body) == ["authorizationData"]
    (item,) = body["authorizationData"]
    assert set(item) == {"authorizationToken", "expiresAt", "proxyEndpoint"}
    assert isinstance(item["expiresAt"], (int, float))


def test_every_call_gets_a_fresh_token(emu):
    client = emu.client()
    tokens = {client.get_authorization_token()["authorizationData"][0]["authorizationToken"]
              for _ in range(3)}
    assert len(tokens) == 3


def test_ttl_from_control(emu):
    emu.set_control({"ttl_seconds": 120})
    now = time.time()
    data = emu.client().get_authorization_token()["authorizationData"][0]
    assert abs(data["expiresAt"].timestamp() - (now + 120)) < 10


def test_registry_ids(emu):
    resp = emu.client(region="eu-west-1").get_authorization_token(registryIds=["111122223333"])
    (item,) = resp["authorizationData"]
    assert item["proxyEndpoint"] == "https://111122223333.dkr.ecr.eu-west-1.amazonaws.com"


@pytest.mark.parametrize("fail,status,code,message", [
    ("throttle", 400, "ThrottlingException", "Rate exceeded"),
    ("5xx", 500, "ServerException", "Internal server error"),
    ("denied", 400, "AccessDeniedException",
     f"User: arn:aws:iam::{ACCOUNT}:user/testenv is not authorized to perform: "
     "ecr:GetAuthorizationToken on resource: * because no identity-based policy "
     "allows the ecr:GetAuthorizationToken action"),
])
def test_faults(emu, fail, status, code, message):
    emu.set_control({"fail": fail})
    before = emu.calls_count()
    with pytest.raises(ClientError) as excinfo:
        emu.client().get_authorization_token()
    err = excinfo.value.response
    assert err["Error"]["Code"] == code
    assert err["Error"]["Message"] == message
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == code
    assert emu.calls_count() == before + 1
    entry = emu.log_entries()[-1]
    assert entry["outcome"] == fail
    assert "password_sha256" not in entry and "expires_at" not in entry


def outcomes(client, n):
    result = []
    for _ in range(n):
        try:
            client.get_authorization_token()
            result.append("ok")
        except ClientError as exc:
            result.append(exc.response["Error"]["Code"])
    return result


def test_count_semantics(emu):
    client = emu.client()
    emu.set_control({"fail": "throttle", "count": 2})
    assert outcomes(client, 4) == ["ThrottlingException"] * 2 + ["ok"] * 2
    # same content rewritten: no reset
    emu.set_control({"fail": "throttle", "count": 2})
    assert outcomes(client, 1) == ["ok"]
    # changed content: the counter resets
    emu.set_control({"fail": "5xx", "count": 1})
    assert outcomes(client, 2) == ["ServerException", "ok"]
    # whitespace-only change still counts as a change
    emu.set_control(json.dumps({"fail": "5xx", "count": 1}) + "\n")
    assert outcomes(client, 2) == ["ServerException", "ok"]
    # no count: every call fails while fail is set
    emu.set_control({"fail": "denied"})
    assert outcomes(client, 3) == ["AccessDeniedException"] * 3
    emu.set_control({"fail": None})
    assert outcomes(client, 1) == ["ok"]
    emu.set_control({"fail": "throttle", "count": 0})
    assert outcomes(client, 1) == ["ok"]


def test_absent_and_empty_control_file(emu):
    emu.set_control("")
    assert outcomes(emu.client(), 1) == ["ok"]
    emu.control.unlink()
    assert outcomes(emu.client(), 1) == ["ok"]


def test_calls_file_and_log_count_everything(emu):
    before = emu.calls_count()
    lines_before = len(emu.log_entries())
    emu.set_control({"fail": "throttle", "count": 3})
    assert outcomes(emu.client(), 5) == ["ThrottlingException"] * 3 + ["ok"] * 2
    assert emu.calls_count() == before + 5
    entries = emu.log_entries()
    assert len(entries) == lines_before + 5
    assert [e["outcome"] for e in entries[-5:]] == ["throttle"] * 3 + ["ok"] * 2


def test_allowed_access_keys(emu):
    emu.set_control({"allowed_access_keys": ["AKIAGOOD"], "fail": "throttle", "count": 1})
    with pytest.raises(ClientError) as excinfo:
        emu.client(key="AKIABAD").get_authorization_token()
    err = excinfo.value.response
    assert err["Error"]["Code"] == "UnrecognizedClientException"
    assert err["Error"]["Message"] == "The security token included in the request is invalid."
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    entry = emu.log_entries()[-1]
    assert (entry["outcome"], entry["access_key_id"]) == ("unrecognized", "AKIABAD")
    # the rejected call did not use up the fault budget
    assert outcomes(emu.client(key="AKIAGOOD"), 2) == ["ThrottlingException", "ok"]


def test_fail_access_keys(emu):
    emu.set_control({"fail": "5xx", "fail_access_keys": ["AKIADOWN"]})
    assert outcomes(emu.client(key="AKIADOWN"), 2) == ["ServerException"] * 2
    assert outcomes(emu.client(key="AKIAUP"), 2) == ["ok"] * 2


def test_delay_and_concurrency(emu):
    emu.set_control({"delay_seconds": 1.0})
    client = emu.client()  # botocore clients are thread-safe
    before = emu.calls_count()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.get_authorization_token(), range(4)))
    elapsed = time.monotonic() - start
    assert len(results) == 4
    assert elapsed >= 1.0
    assert elapsed < 3.5, "calls were serialised: server is not threaded"
    assert emu.calls_count() == before + 4


def test_ecr_public(emu):
    now = time.time()
    resp = emu.client(service="ecr-public", region="us-east-1").get_authorization_token()
    data = resp["authorizationData"]
    assert set(data) == {"authorizationToken", "expiresAt"}
    password = decode_password(data["authorizationToken"])
    assert abs(data["expiresAt"].timestamp() - (now + 43200)) < 30
    entry = emu.log_entries()[-1]
    assert (entry["service"], entry["region"], entry["outcome"]) == ("ecr-public", "us-east-1", "ok")
    assert entry["password_sha256"] == hashlib.sha256(password.encode()).hexdigest()

    emu.set_control({"fail": "denied", "count": 1})
    with pytest.raises(ClientError) as excinfo:
        emu.client(service="ecr-public").get_authorization_token()
    assert excinfo.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "ecr-public:GetAuthorizationToken" in excinfo.value.response["Error"]["Message"]


def test_sts_through_moto(emu):
    sts = emu.client(service="sts")
    assert sts.get_caller_identity()["Account"] == ACCOUNT
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/puller",
                            RoleSessionName="e2e")["Credentials"]
    assumed = boto3.client(
        "sts", region_name="us-east-1", endpoint_url=emu.url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    assert ":assumed-role/puller/e2e" in assumed.get_caller_identity()["Arn"]


def test_other_ecr_operations_reach_moto(emu):
    ecr = emu.client(region="eu-west-1")
    uri = ecr.create_repository(repositoryName="emu-test")["repository"]["repositoryUri"]
    assert uri == f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/emu-test"
    names = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert "emu-test" in names


def test_unsigned_requests_do_not_crash(emu):
    before = emu.calls_count()
    status, body = http(emu.url + "/", data=b"{}", headers={
        "X-Amz-Target": ECR_TARGET, "Content-Type": "application/x-amz-json-1.1"})
    assert status == 400
    assert json.loads(body)["__type"] == "MissingAuthenticationTokenException"
    assert emu.calls_count() == before + 1
    assert emu.log_entries()[-1]["outcome"] == "unrecognized"
    # garbage that moto itself cannot route: an error, but the server lives on
    status, _ = http(emu.url + "/nowhere", data=b"garbage")
    assert status >= 400
    status, _ = http(emu.url + "/", data=b"not json", headers={
        "X-Amz-Target": ECR_TARGET,
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDX/20260101/us-west-2/ecr/aws4_request, "
                         "SignedHeaders=host, Signature=00"})
    assert status == 200
    assert http(emu.url + "/_emulator/health") == (200, "ok")
