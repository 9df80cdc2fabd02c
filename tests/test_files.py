import json
import os

import pytest

from seglab.files import atomic_write, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_gives_the_umask_permissions_and_leaves_no_temporary(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "out" / "r.json", {"a": float("nan")})
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "r.json").stat().st_mode & 0o777 == mode
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {"a": None}
    assert os.listdir(tmp_path / "out") == ["r.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]
