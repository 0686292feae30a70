"""The examples in the core's docstrings run and give what they show (``doctest``): they are the
first code a reader copies. ``gs2pose_ros.ros`` is left out (it needs rclpy; its behaviour is
tested through real processes)."""

import doctest
import importlib
import pkgutil

import pytest

import gs2pose_ros

CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(gs2pose_ros.__path__, "gs2pose_ros.")
                      if not m.name.startswith("gs2pose_ros.ros"))


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed (run pytest --doctest-modules {module.__file__})"
