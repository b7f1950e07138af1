"""The MLX side of the bridge: mapped names -> model directories -> engine jobs."""

from __future__ import annotations

import logging
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from bridge.engine import Chunk, Done, Embedded, Engine, Failed, Job, PromptSpec
from bridge.errors import (
    BadRequest,
    BridgeError,
    ClientClosed,
    EngineError,
    ModelLoadError,
    ModelNotFound,
)
from bridge.modelinfo.describe import DescriptionCache, ModelDescription
from bridge.routing.registry import MappedModel, Registry, resolve_source, unregister_local_model
from bridge.serving.prompting import PromptTokenizers
from bridge.wire.names import ModelName

log = logging.getLogger(__name__)

PULL_HINT = ", try pulling it first"
# A job that makes no progress for this long is reported as failed rather than hanging the client.
_EVENT_TIMEOUT = 600.0
# How often a request thread waiting for its job checks that the client is still connected.
_CLIENT_POLL = 0.25


@dataclass(frozen=True)
class LocalModel:
    """A mapped model whose weights are on disk."""

    entry: MappedModel
    path: Path
    description: ModelDescription

    @property
    def key(self) -> str:
        return str(self.path.resolve())


def override_source(entry: MappedModel | None, name: str, source: str) -> MappedModel | None:
    """The mapping entry with its MLX source replaced (admin rows may name other weights)."""
    parsed = ModelName.try_parse(name)
    if parsed is None:
        return None
    base = entry or MappedModel(parsed.display, source)
    return replace(base, source=resolve_source(source, Path.cwd()), origin="admin")


class JobStream:
    """Iterates the events of one submitted job; closing it cancels the job.

    `client_gone` (bridge.http.web.client_gone_probe) is asked every quarter second while no event
    comes: a client that hung up cancels its job even when nothing is being written to it (a
    non-streamed answer, a long prompt being prefilled, a queue wait).
    """

    def __init__(self, engine: Engine, job: Job,
                 client_gone: Callable[[], bool] | None = None,
                 on_done: Callable[[Job, str, Done], None] | None = None) -> None:
        self.job = job
        self.client_gone = client_gone
        self.on_done = on_done  # told the whole generated text at the end (chat transcripts)
        self._text: list[str] = []
        engine.submit(job)
        self._done = False
        self._probed = time.monotonic()

    def __iter__(self) -> Iterator[Chunk | Done | Embedded]:
        while not self._done:
            event = self._next()
            if isinstance(event, Failed):
                self._done = True
                raise event.error
            if isinstance(event, (Done, Embedded)):  # a job's last event
                self._done = True
                if self.on_done is not None and isinstance(event, Done):
                    self.on_done(self.job, "".join(self._text), event)
            elif self.on_done is not None:
                self._text.append(event.text)
            yield event

    def _next(self) -> Chunk | Done | Embedded | Failed:
        poll = _EVENT_TIMEOUT if self.client_gone is None else _CLIENT_POLL
        waited = 0.0
        while True:
            try:
                event = self.job.events.get(timeout=poll)
            except queue.Empty:
                waited += poll
                self._check_client(force=True)
            else:
                # Asked while events flow too: a steady stream of tokens must not hide a hang-up.
                self._check_client(force=False)
                return event
            if waited >= _EVENT_TIMEOUT:
                self.close()
                raise EngineError("the MLX engine stopped responding")

    def _check_client(self, force: bool) -> None:
        """At most every quarter second (or now, after a wait): cancel if the client hung up."""
        if self.client_gone is None:
            return
        now = time.monotonic()
        if not force and now - self._probed < _CLIENT_POLL:
            return
        self._probed = now
        if self.client_gone():
            self.close()
            log.info("client disconnected, job canceled request_id=%s", self.job.request_id)
            raise ClientClosed("client disconnected")

    def close(self) -> None:
        if not self._done:
            self.job.cancel()
            self._done = True


def has_images(spec: PromptSpec) -> bool:
    return bool(spec.images) or any(m.get("images") for m in spec.messages or [])


class LocalBackend:
    """Resolves names through the registry and runs them on the engine."""

    def __init__(self, registry: Registry, engine: Engine) -> None:
        self.registry = registry
        self.engine = engine
        self.descriptions = DescriptionCache()
        self.tokenizers = PromptTokenizers(max_models=engine.cache.max_loaded + 1,
                                           shared=engine.tokenizers)
        engine.unload_listeners.append(self.tokenizers.forget)

    def find(self, name: str, source: str | None = None) -> LocalModel | None:
        """The mapped, present model for `name` (or for `source`, an admin row's mlx_model), or
        None."""
        entry = self.registry.lookup(name)
        if source:
            entry = override_source(entry, name, source)
        if entry is None:
            return None
        path = self.registry.local_dir(entry)
        if path is None:
            return None
        try:
            description = self.descriptions.get(path)
        except ValueError as exc:  # corrupt files: a load error (an `auto` model falls back)
            raise ModelLoadError(f"failed to load model: {exc}") from None
        return LocalModel(entry, path, description)

    def require(self, name: str, source: str | None = None) -> LocalModel:
        """Like find(), raising Ollama's 404 texts."""
        model = self.find(name, source)
        if model is None:
            hint = PULL_HINT if source or self.registry.lookup(name) else ""
            raise ModelNotFound(name, hint)
        return model

    def present(self) -> list[LocalModel]:
        """Every mapped model whose weights are on disk."""
        found = []
        for entry in self.registry.entries():
            path = self.registry.local_dir(entry)
            if path is None:
                continue
            try:
                found.append(LocalModel(entry, path, self.descriptions.get(path)))
            except ValueError as exc:
                log.warning("skipping unreadable model name=%s path=%s error=%s", entry.name, path,
                            exc)
        return found

    def run(self, job: Job, client_gone: Callable[[], bool] | None = None) -> JobStream:
        rendered = job.spec is not None and job.spec.rendered is not None
        return JobStream(self.engine, job, client_gone, self._remember if rendered else None)

    def _remember(self, job: Job, text: str, done: Done) -> None:
        """The chat's prompt and answer as text and as the ids the model saw, for the next turn
        (not when a stop string cut the text short of the ids, or the prompt was truncated;
        without the last ids when their bytes made no whole character)."""
        spec = job.spec
        if (spec is None or spec.rendered is None or spec.tokens is None or done.stop_sequence
                or done.prompt_eval_count != len(spec.tokens)):
            return
        answer = len(done.context) - done.prompt_eval_count  # the generated ids after the prompt
        self.tokenizers.remember(job.model_path, spec.rendered + text, done.context,
                                 answer if done.cut_tail else 0)

    def tokenize(self, model: LocalModel, job: Job) -> None:
        """Render and tokenize a job's prompt (or embedding inputs) here, on the request thread,
        so that the engine thread never spends time on it (bridge/serving/prompting.py)."""
        spec = job.spec
        if spec is None or spec.tokens is not None or spec.embed_tokens is not None:
            return
        context = job.options.context(model.description.context_length)
        digest = model.description.digest
        if spec.embed_inputs is not None:
            spec.embed_tokens = self.tokenizers.embed_tokens(model.key, digest, spec, context)
            return
        if "vision" in model.description.capabilities and has_images(spec):
            return  # mlx-vlm's processor makes the tokens with the images (engine/vision.py)
        spec.tokens = self.tokenizers.tokens(model.key, digest, spec, context)
        prepare = getattr(spec.logits_processor_factory, "prepare", None)
        tokenizer = self.tokenizers.loaded(model.key, digest) if prepare else None
        if prepare is not None and tokenizer is not None:
            prepare(tokenizer)  # the grammar's matcher, off the engine thread

    def draft_path(self, model: LocalModel) -> str | None:
        """The directory of the mapping's speculative draft (a mapped name or a source)."""
        draft = model.entry.draft
        if not draft:
            return None
        entry = self.registry.lookup(draft) or replace(model.entry, name=draft, source=draft,
                                                         draft=None)
        path = self.registry.local_dir(entry)
        if path is None:
            raise ModelLoadError(f"draft model {draft!r} of {model.entry.name} is not on disk")
        return str(path.resolve())

    def preload(self, model: LocalModel) -> None:
        """After a load: the request-side tokenizer too, so the first request pays nothing."""
        self.tokenizers.preload(model.key, model.description.digest)

    def unload(self, model: LocalModel) -> None:
        """Unload through the engine (waits for it)."""
        for _ in self.run(Job(model.key, model.entry.name, keep_alive=0)):
            pass

    def delete(self, model: LocalModel) -> None:
        """Delete the weights if the bridge itself put them in its state dir (unloading first);
        when another name uses them too, only this name goes (or a 400 for a mapped name)."""
        if model.entry.is_local_dir or not self.registry.owns(model.path):
            where = ("the user's directory" if model.entry.is_local_dir
                     else "a directory mlx-bridge did not create")
            raise BadRequest(
                f"model '{model.entry.name}' is served from {where} ({model.path}); "
                "mlx-bridge only deletes what it downloaded into its state dir. "
                "Remove it from model_mappings.yaml or delete the files yourself."
            )
        if self._forget_shared(model):
            return
        self.unload(model)
        try:
            shutil.rmtree(model.path)
        except OSError as exc:
            raise BridgeError(f"could not delete {model.path}: {exc.strerror}") from None
        if model.entry.origin == "local":  # imported or pulled: forget the name too
            unregister_local_model(self.registry.home, model.entry.name)
        self.descriptions.clear()
        self.tokenizers.clear()
        log.info("model deleted model=%s path=%s", model.entry.name, model.path)

    def _forget_shared(self, model: LocalModel) -> bool:
        """When other names use the model's files: drop only this name (True), or refuse."""
        sharing = self.registry.names_sharing(model.path, model.entry.name)
        if not sharing:
            return False
        names = ", ".join(f"'{n}'" for n in sharing)
        if model.entry.origin != "local":  # a model_mappings.yaml name cannot be dropped here
            raise BadRequest(
                f"model '{model.entry.name}' shares its files ({model.path}) with {names}; "
                "deleting them would break those names. Remove it from model_mappings.yaml instead."
            )
        unregister_local_model(self.registry.home, model.entry.name)
        log.info("model name deleted, files kept model=%s path=%s shared_with=%s",
                 model.entry.name, model.path, ",".join(sharing))
        return True
