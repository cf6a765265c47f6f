"""An interactive imaging run's pauses: CLEAN asks how to go on (:mod:`radps_flows.core.
interaction`), a person answers.

At each checkpoint the run:

1. draws the residual (and, at the first, the dirty image) into ``pauses/`` of its output
   and as Prefect artifacts;
2. records what it asks (:class:`radps_flows.contract.PauseRequest`: a prompt, the answer's
   fields as they stand, the previews, the timeout) as a flow run input, and the pause's
   number as the label ``radps.io/pause``: the operator shows both in ``.status.input``;
3. lets its Dask workers go (``workers_while_paused: release``; the scheduler stays);
4. pauses with Prefect's ``pause_flow_run(wait_for_input=...)``: Prefect's UI shows the form,
   and ``radps resume`` and the operator (``spec.resume``) resume the flow run through
   Prefect's API with an answer checked against the same model
   (:class:`radps_flows.parameters.imaging.CleanInput`).

An answer the run itself refuses (a mask file it cannot read, or of another size) pauses it
again, with the reason in the new prompt. A pause with no answer within
``pause_timeout_seconds`` fails the run (``pause_timeout_action: fail``) or finishes it with
the products as they are (``finish``). The run keeps its own clock and resumes itself then;
Prefect's own pause timeout, later, is only a backstop (its server fails a run still paused
then).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from radps_flows import contract, locations
from radps_flows.core import previews, products
from radps_flows.core.clean import box_mask
from radps_flows.core.executors import Executor
from radps_flows.core.interaction import CleanAnswer, CleanCheckpoint, Interaction
from radps_flows.parameters.imaging import CleanInput
from radps_flows.pipelines.outputs import publish_preview
from radps_flows.progress import report_labels

POLL_SECONDS = 2
"""How often a paused run asks Prefect whether it was resumed."""
PREFECT_TIMEOUT_GRACE_SECONDS = 600
"""Prefect's pause timeout is the run's own plus this: the run ends its pause itself first."""


class PauseTimedOut(RuntimeError):
    """No answer to a pause within pause_timeout_seconds (pause_timeout_action: fail)."""


def interaction(params: dict, folder: str, source: str, ex: Executor) -> Interaction | None:
    """The interaction of an imaging run with ``interactive: true``, else None."""
    if not params.get("interactive"):
        return None
    pauses = Pauses(params, folder, source, ex)
    return Interaction(
        pauses,
        after_each_cycle=bool(params.get("interactive_cycles")),
        keeps_workers=params.get("workers_while_paused") == "keep",
    )


@dataclass
class Pauses:
    """Asks at each checkpoint, through a Prefect pause (see the module's docstring)."""

    params: dict
    folder: str
    source: str
    ex: Executor
    count: int = 0
    refused: str | None = field(default=None, repr=False)
    mask_file: str | None = None
    """The FITS mask in force (an earlier answer's), so that an answer can keep or clear it."""

    def __call__(self, checkpoint: CleanCheckpoint) -> CleanAnswer:
        from prefect import get_run_logger

        log = get_run_logger()
        self.refused = None
        while True:
            self.count += 1
            request = self._request(checkpoint)
            log.info("pause %d: %s", self.count, request.prompt)
            values = self._wait(request)
            answer, refused = self._answer(values, checkpoint)
            if refused is None:
                log.info("pause %d answered: %s", self.count, _shown(values))
                if answer.set_mask:
                    mask = values.get("mask")
                    self.mask_file = mask if isinstance(mask, str) else None
                return replace(answer, pause=self.count)
            log.warning("pause %d: answer refused, asking again: %s", self.count, refused)
            self.refused = refused

    def _request(self, checkpoint: CleanCheckpoint) -> contract.PauseRequest:
        where = (
            "the PSF and dirty image"
            if checkpoint.cycle == 0
            else f"major cycle {checkpoint.cycle}"
        )
        prompt = (
            f"CLEAN paused after {where}: residual peak {checkpoint.peak:.4g} Jy/beam, dirty "
            f"rms {checkpoint.rms:.4g} Jy/beam, {checkpoint.components} of niter "
            f"{checkpoint.niter} components, threshold {checkpoint.threshold:.4g} Jy/beam. "
            "Answer niter, threshold_jy, mask, or action: stop."
        )
        return contract.PauseRequest(
            pause=self.count,
            prompt=prompt,
            defaults={
                "action": "continue",
                "niter": checkpoint.niter,
                "threshold_jy": checkpoint.threshold,
                "mask": self._mask_now(checkpoint),
            },
            previews=self._previews(checkpoint),
            timeout_seconds=int(self.params["pause_timeout_seconds"]),
            timeout_action=str(self.params["pause_timeout_action"]),
            refused=self.refused,
        )

    def _mask_now(self, checkpoint: CleanCheckpoint) -> list | str:
        """The mask as an answer states it: the FITS file in force, its boxes, or [] for
        anywhere."""
        if self.mask_file is not None:
            return self.mask_file
        return checkpoint.mask if checkpoint.mask is not None else []

    def _previews(self, checkpoint: CleanCheckpoint) -> list[str]:
        """PNGs of what to look at, in ``pauses/`` of the output and as artifacts."""
        shown = ["residual", "dirty"] if checkpoint.cycle == 0 else ["residual"]
        out = []
        for name in shown:
            location = locations.join(self.folder, "pauses", f"pause-{self.count}-{name}.png")
            with locations.local_file(location) as path:
                previews.write_png(checkpoint.images[name], path, f"{name} at pause {self.count}")
                publish_preview(
                    path, f"{name} of {self.source} at pause {self.count}", f"pause-{name}"
                )
            out.append(location)
        return out

    def _wait(self, request: contract.PauseRequest) -> dict[str, Any]:
        """Pause the flow run until an answer comes (or the run's own timeout); the answer's
        fields."""
        from prefect.client.orchestration import get_client
        from prefect.context import FlowRunContext
        from prefect.flow_runs import pause_flow_run
        from prefect.input.run_input import run_input_subclass_from_type

        run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
        with get_client(sync_client=True) as client:
            client.create_flow_run_input(
                run.id, contract.pause_input_key(self.count), json.dumps(_json(request.to_json()))
            )
        report_labels({contract.PAUSE_LABEL: str(self.count)}, wait=True)
        form = run_input_subclass_from_type(CleanInput).with_initial_data(
            description=_description(request), **request.defaults
        )
        timeout = request.timeout_seconds
        clock = _PauseClock(run.id, timeout, request.defaults)
        released = self.params.get("workers_while_paused") != "keep" and self.ex.scale(0)
        self.ex.keep_scheduler(True)
        try:
            clock.start()
            answer = pause_flow_run(
                wait_for_input=form,
                timeout=timeout + PREFECT_TIMEOUT_GRACE_SECONDS,
                poll_interval=POLL_SECONDS,
                key=f"radps-pause-{self.count}",
            )
        finally:
            clock.cancel()
            self.ex.keep_scheduler(False)
            if released:
                self.ex.scale(_expected_workers(self.ex))
        if clock.fired.is_set():
            if request.timeout_action == "fail":
                raise PauseTimedOut(
                    f"no answer to pause {self.count} within pause_timeout_seconds ({timeout} s)"
                )
            return {"action": "stop"}
        return answer.model_dump(exclude_unset=False)

    def _answer(
        self, values: dict[str, Any], checkpoint: CleanCheckpoint
    ) -> tuple[CleanAnswer, str | None]:
        """The answer as the driver takes it, or why it is refused."""
        imsize = int(self.params["imsize"])
        errors = CleanInput.errors(values, self.params)
        if values.get("pause") not in (None, self.count):
            return (
                CleanAnswer(),
                f"pause: answers pause {values['pause']}, this is pause {self.count}",
            )
        if errors:
            return CleanAnswer(), "; ".join(f"{e.path}: {e.message}" for e in errors)
        if values.get("action") == "stop":
            return CleanAnswer(stop=True), None
        mask = values.get("mask")
        kwargs: dict[str, Any] = {}
        if mask is None or mask == self._mask_now(checkpoint):
            pass  # as it stands
        elif isinstance(mask, str):
            try:
                with locations.local_copy(mask) as local:
                    image = products.read_mask_image(local, imsize)
                kwargs.update(mask=image, mask_file=mask, set_mask=True)
            except (products.ModelImageError, OSError) as exc:
                return CleanAnswer(), f"mask: {exc}"
        else:
            kwargs.update(mask=box_mask(mask, imsize), mask_boxes=mask, set_mask=True)
        # a form fills in every field with the settings as they stand: only changes count
        niter, threshold = values.get("niter"), values.get("threshold_jy")
        return (
            CleanAnswer(
                niter=None if niter == checkpoint.niter else niter,
                threshold_jy=None if threshold == checkpoint.threshold else threshold,
                **kwargs,
            ),
            None,
        )


class _PauseClock:
    """Ends a pause when its time is up: resumes the flow run with its defaults and stop
    (Prefect checks them against the form), and says so in :attr:`fired`."""

    def __init__(self, flow_run_id: Any, seconds: float, defaults: dict[str, Any]):
        self.fired = threading.Event()
        context = contextvars.copy_context()  # which Prefect API to talk to
        self._timer = threading.Timer(seconds, context.run, (self._fire, flow_run_id, defaults))
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self, flow_run_id: Any, defaults: dict[str, Any]) -> None:
        from prefect.flow_runs import resume_flow_run

        # answered meanwhile, the resume is refused: the answer stands
        with contextlib.suppress(Exception):
            resume_flow_run(flow_run_id, run_input={**defaults, "action": "stop"})
            self.fired.set()


def _expected_workers(ex: Executor) -> int:
    return int(getattr(ex, "expected_workers", 1) or 1)


def _description(request: contract.PauseRequest) -> str:
    """The form's text in Prefect's UI (markdown)."""
    lines = []
    if request.refused:
        lines.append(f"**The last answer was refused:** {request.refused}\n")
    lines.append(request.prompt)
    lines.append("\nPreviews (also among this run's artifacts):")
    lines += [f"- `{p}`" for p in request.previews]
    return "\n".join(lines)


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items() if v is not None)


def _json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
