"""The locked install: requirements/lock.txt covers setup.cfg, pins the CPU torch, and is
what CI runs with."""

import configparser
import os
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pyg_transformer.compat import GSM_PACKAGE, GSM_SERIES, check_gsm_version

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


LOCK = _pins(ROOT / "requirements" / "lock.txt")
NO_DEPS = _pins(ROOT / "requirements" / "no-deps.txt")


def _declared() -> list[Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    for extra in ("test", "docs"):
        lines += setup["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


@pytest.mark.parametrize("requirement", _declared(), ids=str)
def test_lock_pins_every_declared_requirement_within_its_range(requirement):
    name = canonicalize_name(requirement.name)
    assert name in LOCK, f"{name} is declared in setup.cfg but missing from the lock: make lock"
    assert requirement.specifier.contains(LOCK[name], prereleases=True), (
        f"lock pins {name}=={LOCK[name]} outside setup.cfg's {requirement.specifier}")


def test_lock_takes_the_cpu_torch_and_no_cuda_wheels():
    assert LOCK["torch"].endswith("+cpu")
    assert not [name for name in LOCK if name.startswith("nvidia-")]


def test_gsm_pin_is_the_series_the_loader_uses():
    assert NO_DEPS[canonicalize_name(GSM_PACKAGE)].startswith(GSM_SERIES)
    check_gsm_version(metadata.version(GSM_PACKAGE))
    with pytest.raises(ImportError, match=r"0\.6\.0 is installed.*0\.5\.x.*--no-deps"):
        check_gsm_version("0.6.0")


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI installs exactly the lock")
def test_ci_runs_with_the_locked_versions():
    wrong = {}
    for name, version in {**LOCK, **NO_DEPS}.items():
        installed = metadata.version(name)
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed != locked: {wrong}"


def test_protein_install_command_names_the_pinned_sidechainnet():
    from pyg_transformer.data.protein import SIDECHAINNET_INSTALL, SIDECHAINNET_PACKAGE

    pin = f"{SIDECHAINNET_PACKAGE}=={NO_DEPS[SIDECHAINNET_PACKAGE]}"
    assert pin in SIDECHAINNET_INSTALL and "--no-deps" in SIDECHAINNET_INSTALL
