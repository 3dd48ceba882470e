"""A long-running ClientApp executor for one SuperNode: torch, fedprune and the client data load once.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process
(``--isolation subprocess``, or whatever a SuperExec launches with ``--isolation process``),
which imports torch and rebuilds the client's data each time. This process takes the
SuperExec's place for a SuperNode started with ``--isolation process``: it polls the
SuperNode's Runtime API for tasks (``AcquireTask``) and runs each one in this interpreter with
Flower's own task steps (``pull_task_input``, the ClientApp, ``push_message``,
``push_task_output``), so fedprune's per-process data cache (``clients_data``) lives on.

It serves fedprune's ClientApp as imported here. A task whose app (FAB) is not fedprune,
or whose fedprune sources differ from the ones loaded here, runs in Flower's one-shot
``flwr-clientapp`` process instead (correct, only slower). Context state goes back to the
SuperNode after every task, as with Flower's own process. The executor exits when the
SuperNode named by ``--supernode-pid`` stops.

    python -m fedprune.deploy.executor --runtime-api-address 127.0.0.1:9094 [--supernode-pid PID]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import time
import zipfile
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

import fedprune

#: the FAB id ``flwr run .`` gives this project (publisher/name from pyproject.toml)
FAB_ID = "fedprune/fedprune"
PACKAGE = Path(fedprune.__file__).resolve().parent


def _client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"), *interceptors],
        retry_invoker=make_simple_http_retry_invoker())


def fab_matches_loaded_code(fab_content: bytes) -> bool:
    """Whether every ``fedprune/**.py`` file in the FAB equals this process's file, and no
    source file is missing from either side."""
    with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
        shipped = {name: fab.read(name) for name in fab.namelist()
                   if name.startswith("fedprune/") and name.endswith(".py")}
    local = {f"fedprune/{p.relative_to(PACKAGE).as_posix()}": p
             for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    return set(shipped) == set(local) and all(
        hashlib.sha256(data).digest() == hashlib.sha256(local[name].read_bytes()).digest()
        for name, data in shipped.items())


class Executor:
    """Runs the tasks of one SuperNode's Runtime API, fedprune's in this process."""

    def __init__(self, address: str, poll_s: float = 0.05) -> None:
        self.address = address
        self.poll_s = poll_s
        self.verdicts: dict[str, bool] = {}  # FAB hash -> served in this process
        self._app: ClientApp | None = None

    def app(self) -> ClientApp:
        if self._app is None:
            from fedprune.clients.app import app

            self._app = app
        return self._app

    def serve_forever(self) -> None:
        acquirer = _client(self.address)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        while True:
            response = acquirer.AcquireTask(request)
            if response.HasField("task") and response.token:
                self.run_task(response.token)
            else:
                time.sleep(self.poll_s)

    def run_task(self, token: str) -> None:
        """One task: pull its input, run the ClientApp here (or hand it to ``flwr-clientapp``), push
        the reply and the context."""
        client = _client(self.address, RuntimeTokenHttpInterceptor(token))
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            if not self._serves(run.fab_id, fab.hash_str, fab.content):
                heartbeat.stop()
                client.close()
                self._one_shot(token)
                return
            reply = self.app()(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as error:  # the same error reply Flower's own ClientApp process sends
            log(ERROR, "ClientApp raised an exception", exc_info=error)
            details = f"{type(error)}:<'{error}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        if reply is not None and context is not None:
            try:
                push_message(client, reply, context)
            except Exception as error:
                log(ERROR, "Failed to push the reply", exc_info=error)
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()

    def _serves(self, fab_id: str, fab_hash: str, content: bytes) -> bool:
        if fab_hash not in self.verdicts:
            self.verdicts[fab_hash] = fab_id == FAB_ID and fab_matches_loaded_code(content)
            log(INFO, "app %s (FAB %s...): %s", fab_id, fab_hash[:12],
                "served in this process" if self.verdicts[fab_hash] else
                "not the fedprune loaded here: one flwr-clientapp process per message")
        return self.verdicts[fab_hash]

    def _one_shot(self, token: str) -> None:
        subprocess.Popen([str(Path(sys.executable).parent / "flwr-clientapp"),  # noqa: S603
                          "--runtime-api-address", self.address, "--token", token, "--insecure"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedprune.deploy.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    parser.add_argument("--supernode-pid", type=int, help="exit when this process (the SuperNode) stops")
    parser.add_argument("--poll-s", type=float, default=0.05, help="seconds between polls when idle")
    args = parser.parse_args(argv)
    if args.supernode_pid is not None:
        start_parent_process_monitor(args.supernode_pid)
    import fedprune.clients.app  # noqa: F401  (torch and fedprune load now, not at the first message)
    from fedprune.deploy.polling import shorten_object_pulls

    shorten_object_pulls()

    try:
        Executor(args.runtime_api_address, args.poll_s).serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
