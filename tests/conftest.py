"""Shared fixtures. Compiled functions are cached per EngineSpec inside JAX, so tests reuse them by
building engines through these fixtures instead of new configurations each time."""

import os
import shutil
import tempfile

import jax
import pytest

# The CLI turns JAX's persistent compilation cache on; in tests it would write into the user's home
# and let one run's programs speed up the next: keep it off unless the caller asks for it.
os.environ.setdefault("HERMES_JAX_CACHE", "off")
# Most of the suite's time is XLA compiling small programs that then run for milliseconds: LLVM's
# optimisation passes cost more than they save here (about 40% off each compile). Results are the
# same programs' (tests compare runs made under the same flags, or with tolerances); a caller's own
# XLA_FLAGS win.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

jax.config.update("jax_enable_x64", True)  # gradient and precision tests need float64

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, mappings  # noqa: E402

# The suite's one process compiles hundreds of configurations and reuses many across modules:
# clearing the caches at the library's default share (3/4 of the mapping limit) cost ~2 minutes of
# recompiles; clear only close to the limit, where the process would otherwise die.
mappings.DEFAULT_SHARE = 0.95


# One persistent compilation cache for the session's processes (the pytest-xdist workers): a program
# both workers need is compiled by one and loaded by the other. It lives in a directory of this
# session only, removed at the end, so no run speeds up the next; programs that compile in under a
# second are not kept (writing them costs about what it saves).
SESSION_CACHE = "HERMES_JAX_TEST_XLA_CACHE"


def pytest_configure(config):
    if SESSION_CACHE not in os.environ:   # the controller (or a single process): workers inherit it
        os.environ[SESSION_CACHE] = tempfile.mkdtemp(prefix="hermes-jax-test-xla-")
        config.session_cache_owner = True
    jax.config.update("jax_compilation_cache_dir", os.environ[SESSION_CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_unconfigure(config):
    if getattr(config, "session_cache_owner", False):
        shutil.rmtree(os.environ.pop(SESSION_CACHE), ignore_errors=True)


@pytest.fixture(scope="session")
def a100_ideal():
    return get_hardware("a100-80gb", ideal=True)


@pytest.fixture(scope="session")
def h100():
    return get_hardware("h100-sxm")


@pytest.fixture(scope="session")
def llama7b_a100(a100_ideal):
    return EngineSpec(get_model("llama-2-7b"), a100_ideal.spec, Parallelism(tp=1))


@pytest.fixture(scope="session")
def llama70b_h100_tp8(h100):
    return EngineSpec(get_model("llama-2-70b"), h100.spec, Parallelism(tp=8))


def pytest_terminal_summary(terminalreporter, config):
    """How close the process that ran the tests came to its memory-mapping limit (hermes_jax.mappings);
    with worker processes (pytest-xdist) the controller ran none, and says nothing."""
    if getattr(config.option, "numprocesses", None):
        return
    from hermes_jax import mappings
    count, limit = mappings.mapping_count(), mappings.mapping_limit()
    if count is not None and limit is not None:
        terminalreporter.write_line(f"memory mappings at the end: {count:,} of {limit:,}; compilation caches cleared "
                                    f"{mappings.cleared} time(s)")


# Modules whose configurations no other test compiles run last: if their mappings push the process
# past the clearing share, no later module has to compile its programs again (the first full run with
# test_serving_design in alphabetical order cleared the caches once and took 931 s).
RUN_LAST = ("test_serving_design",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.module.__name__.rsplit(".", 1)[-1] in RUN_LAST)   # stable: order kept
