"""gateway.audit is one namespace (httpx's way): its __all__ is exactly what it offers, and code outside the
package imports from the namespace (or uses integrity, replay... as its modules), never from the modules behind."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

import gateway.audit as audit

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parent.parent


def test_all_is_exactly_what_the_package_offers() -> None:
    offered = {name for name, value in vars(audit).items()
               if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert sorted(audit.__all__) == sorted(offered)
    assert len(set(audit.__all__)) == len(audit.__all__)


def test_code_outside_the_package_imports_from_its_namespace() -> None:
    behind = re.compile(r"^\s*(from gateway\.audit\.\w+ import|import gateway\.audit\.)", re.M)
    outside = [path for folder in ("gateway", "connectors", "tests", "bench") for path in (ROOT / folder).rglob("*.py")
               if not path.is_relative_to(ROOT / "gateway" / "audit")]
    assert outside
    assert [str(p.relative_to(ROOT)) for p in outside if behind.search(p.read_text())] == []
