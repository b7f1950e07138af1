"""The engine thread on the real MLX tiny model: keep_alive, LRU, cancellation, queue bound."""

from __future__ import annotations

import time

import pytest

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec
from bridge.engine.sink import TokenSink
from bridge.errors import ClientClosed, ModelLoadError, ServerBusy
from bridge.testing import build_tiny_model
from bridge.wire.options import Options


def drain(job: Job, timeout: float = 30) -> list:
    events = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        ev = job.events.get(timeout=timeout)
        events.append(ev)
        if isinstance(ev, Done | Failed):
            return events
    raise AssertionError("job did not finish")


@pytest.fixture
def engine():
    eng = Engine(keep_alive=300, max_loaded=2, max_queue=4)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    return [str(build_tiny_model(root / f"m{i}", seed=i)) for i in range(3)]


def gen_job(path: str, n: int = 4, **kw) -> Job:
    return Job(path, "m", spec=PromptSpec(prompt="hello"),
               options=Options(temperature=0, num_predict=n), **kw)


def test_generates_and_reports_metrics(engine, tiny_model_dir):
    job = gen_job(str(tiny_model_dir), n=5)
    engine.submit(job)
    events = drain(job)
    done = events[-1]
    assert isinstance(done, Done) and done.eval_count == 5 and done.done_reason == "length"
    assert done.load_duration > 0 and done.prompt_eval_count == len(done.context) - 5


def test_keep_alive_expiry_frees_the_model(engine, tiny_model_dir):
    job = gen_job(str(tiny_model_dir), keep_alive=0.5)
    engine.submit(job)
    drain(job)
    assert [i.key for i in engine.snapshot()] == [str(tiny_model_dir)]
    deadline = time.time() + 5
    while engine.snapshot() and time.time() < deadline:
        time.sleep(0.1)
    assert engine.snapshot() == []


def test_lru_eviction_keeps_at_most_max_loaded(engine, three_models):
    for path in three_models:
        job = gen_job(path, n=1)
        engine.submit(job)
        drain(job)
    loaded = {i.key for i in engine.snapshot()}
    assert loaded == set(three_models[1:]), "the least recently used model is evicted"


def test_cancel_stops_generation_and_frees_the_engine(engine, tiny_model_dir):
    long = gen_job(str(tiny_model_dir), n=2000)
    engine.submit(long)
    assert isinstance(long.events.get(timeout=30), Chunk)
    long.cancel()
    events = drain(long)
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, ClientClosed)
    short = gen_job(str(tiny_model_dir), n=2)
    started = time.time()
    engine.submit(short)
    assert isinstance(drain(short)[-1], Done)
    assert time.time() - started < 10
    assert engine.snapshot()[0].active == 0


def test_queue_bound_answers_busy(tiny_model_dir):
    eng = Engine(max_queue=2)  # not started: nothing is taken off the queue
    eng._thread = type("T", (), {"is_alive": lambda self: True})()
    eng.state = "running"
    eng.submit(gen_job(str(tiny_model_dir)))
    eng.submit(gen_job(str(tiny_model_dir)))
    with pytest.raises(ServerBusy) as err:
        eng.submit(gen_job(str(tiny_model_dir)))
    assert err.value.status == 503 and "maximum pending requests exceeded" in err.value.message


def test_load_failure_is_reported_and_engine_survives(engine, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no_such_arch"}')
    (broken / "model.safetensors").write_bytes(b"junk")
    job = gen_job(str(broken))
    engine.submit(job)
    failed = drain(job)[-1]
    assert isinstance(failed, Failed) and isinstance(failed.error, ModelLoadError)
    ok = gen_job(str(tiny_model_dir))
    engine.submit(ok)
    assert isinstance(drain(ok)[-1], Done)


class FakeDetok:
    """Maps token ids to text pieces; 0 stands for a byte held back until the next token."""

    def __init__(self, pieces):
        self.pieces, self.buf, self.out = pieces, "", ""

    def add_token(self, t):
        self.out += self.pieces[t]

    @property
    def last_segment(self):
        seg, self.out = self.out, ""
        return seg

    def finalize(self):
        pass


class FakeTokenizer:
    def __init__(self, pieces):
        self.detokenizer = FakeDetok(pieces)
        self.eos_token_ids = {99}


def run_sink(pieces, tokens, stop=(), max_tokens=100):
    events = []
    sink = TokenSink(FakeTokenizer(pieces), events.append, prompt=[1], max_tokens=max_tokens,
                     stop=stop)
    for t in tokens:
        if sink.add(t):
            break
    else:
        sink.finish("length")
    return "".join(e.text for e in events if isinstance(e, Chunk)), sink.final


def test_sink_stop_string_split_across_tokens():
    text, done = run_sink({1: "Hello", 2: " wor", 3: "ld!", 4: " more"}, [1, 2, 3, 4],
                          stop=("world",))
    assert text == "Hello " and done.done_reason == "stop"


def test_sink_holds_back_possible_stop_prefix_then_releases_it():
    text, done = run_sink({1: "ab", 2: "c", 3: "d"}, [1, 2, 3], stop=("cx",))
    assert text == "abcd" and done.done_reason == "length"


def test_sink_eos_and_max_tokens():
    text, done = run_sink({1: "a", 2: "b"}, [1, 99, 2])
    assert text == "a" and done.done_reason == "stop" and done.eval_count == 2
    text, done = run_sink({1: "a"}, [1, 1, 1, 1], max_tokens=2)
    assert text == "aa" and done.done_reason == "length" and done.eval_count == 2
