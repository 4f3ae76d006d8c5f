"""The master's start-up cleanup of PROMETHEUS_MULTIPROC_DIR, on a real directory."""

from __future__ import annotations

from service.lifecycle import metrics_dir


def test_claim_deletes_only_metric_files(tmp_path):
    (tmp_path / "counter_101.db").write_bytes(b"old counts")
    (tmp_path / "gauge_livesum_102.db").write_bytes(b"old gauge")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.db").write_text("keep me too")
    try:
        metrics_dir.claim_metrics_dir(str(tmp_path))
    finally:
        metrics_dir.close_inherited_lock()

    assert not (tmp_path / "counter_101.db").exists()
    assert not (tmp_path / "gauge_livesum_102.db").exists()
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "sub" / "data.db").read_text() == "keep me too"
    assert (tmp_path / metrics_dir.LOCK_FILE_NAME).exists()
