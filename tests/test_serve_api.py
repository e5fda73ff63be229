"""`draem serve`'s API through the real app (FastAPI's TestClient): inspect, history, reviews, thresholds."""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pytest
from PIL import Image
from serve_support import (
    GatedPredictor,
    encode,
    flat,
    inspect,
    make_run,
    noisy,
    one_torch_thread,
    serving,
    stored_files,
    tiny_run,
)

from draem import methods
from draem.engine.run import ModelInfo, save_model

__all__ = ["one_torch_thread", "tiny_run"]


def test_inspect_answers_per_image_and_stores_image_map_and_overlay(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        answer = inspect(client, noisy(1), flat(), source="line-1", part_id="P-7")
        assert answer.status_code == 200
        first, second = answer.json()["inspections"]
        version = hashlib.sha256((tiny_run / "model.pt").read_bytes()).hexdigest()[:12]
        assert first["decision"] == "defective" and second["decision"] == "good"
        assert first["score"] > first["threshold"] > second["score"]
        assert 0.5 < first["normalized_score"] <= 1 and 0 <= second["normalized_score"] < 0.5
        assert first["model_version"] == version and first["timestamp"].endswith("Z")
        assert (first["source"], first["part_id"], first["file_name"]) == ("line-1", "P-7", "part0.png")
        assert 0 < first["defect_area"] <= 1
        assert client.get(f"/api/v1/inspections/{first['id']}").json() == first
        image = client.get(f"/api/v1/inspections/{first['id']}/image")
        assert image.headers["content-type"] == "image/png" and image.content == noisy(1)
        anomaly_map = Image.open(io.BytesIO(client.get(f"/api/v1/inspections/{first['id']}/map").content))
        overlay = Image.open(io.BytesIO(client.get(f"/api/v1/inspections/{first['id']}/overlay").content))
        assert anomaly_map.mode.startswith("I") and anomaly_map.size == (32, 32)
        assert overlay.mode == "RGB" and overlay.size == (32, 32)
        thumbnail = Image.open(io.BytesIO(client.get(f"/api/v1/inspections/{first['id']}/thumbnail").content))
        assert thumbnail.size == (32, 32)
        assert client.get("/api/v1/inspections/nope").status_code == 404
        assert client.get("/api/v1/inspections/../x").status_code == 404
    names = {path.name.split(".")[0] for path in stored_files(tmp_path / "store")}
    assert names == {first["id"], second["id"]}


def test_history_lists_newest_first_with_filters_and_pages(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        ids = [inspect(client, image, source=source).json()["inspections"][0]["id"]
               for image, source in ((noisy(1), "a"), (flat(), "a"), (noisy(2), "b"), (flat(80), "b"))]
        client.post(f"/api/v1/inspections/{ids[0]}/review", json={"verdict": "good"})
        listed = client.get("/api/v1/inspections").json()
        assert listed["total"] == 4 and [i["id"] for i in listed["inspections"]] == ids[::-1]

        def found(query: str) -> list[str]:
            answer = client.get(f"/api/v1/inspections?{query}")
            assert answer.status_code == 200, answer.text
            return [i["id"] for i in answer.json()["inspections"]]

        assert found("decision=defective") == [ids[2], ids[0]]
        assert found("review=good") == [ids[0]] and found("review=unreviewed") == ids[:0:-1]
        assert found("source=b&decision=good") == [ids[3]]
        assert found("limit=2&offset=1") == [ids[2], ids[1]]
        assert found("since=2000-01-01T00:00:00Z") == ids[::-1] and found("until=0") == []
        for bad in ("since=yesterday", "since=2024-01-01T00:00:00", "limit=0", "decision=maybe"):
            answer = client.get(f"/api/v1/inspections?{bad}")
            assert answer.status_code == 400 and answer.json()["detail"]


def test_reviews_record_the_operator_and_the_latest_wins(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        inspection_id = inspect(client, noisy(1)).json()["inspections"][0]["id"]
        path = f"/api/v1/inspections/{inspection_id}/review"
        assert client.post(path, json={"verdict": "defective"}).json()["review"]["verdict"] == "defective"
        answer = client.post(path, json={"verdict": "good", "note": "dust <b>"}, headers={"X-Operator": "Ann"})
        review = answer.json()["review"]
        assert (review["verdict"], review["note"], review["operator"]) == ("good", "dust <b>", "Ann")
        assert client.post(path, json={"verdict": "fine"}).status_code == 400
        assert client.post("/api/v1/inspections/x-1/review", json={"verdict": "good"}).status_code == 404


def test_a_saved_threshold_applies_to_new_inspections_and_survives_a_restart(tiny_run, tmp_path):
    store = tmp_path / "store"
    with serving(tiny_run, store) as (client, _):
        before = inspect(client, noisy(1)).json()["inspections"][0]
        assert client.get("/api/v1/thresholds").json()["threshold"] == pytest.approx(0.53)
        saved = client.post("/api/v1/thresholds", json={"threshold": 0.99}, headers={"X-Operator": "Bo"}).json()
        assert saved["threshold"] == 0.99 and saved["calibrated_threshold"] == pytest.approx(0.53)
        assert saved["history"][0]["operator"] == "Bo"
        after = inspect(client, noisy(1)).json()["inspections"][0]
        assert (before["decision"], after["decision"], after["threshold"]) == ("defective", "good", 0.99)
        assert client.get(f"/api/v1/inspections/{before['id']}").json()["decision"] == "defective"
        assert client.post("/api/v1/thresholds", json={"threshold": "high"}).status_code == 400
    with serving(tiny_run, store) as (client, _):
        assert client.get("/api/v1/thresholds").json()["threshold"] == 0.99
        assert inspect(client, noisy(1)).json()["inspections"][0]["decision"] == "good"
        assert client.get("/api/v1/inspections").json()["total"] == 3


def test_the_slider_data_holds_every_reviewed_score_of_the_model(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        items = inspect(client, noisy(1), flat(), noisy(2)).json()["inspections"]
        for item, verdict in zip(items, ("defective", "good", "unsure"), strict=True):
            client.post(f"/api/v1/inspections/{item['id']}/review", json={"verdict": verdict})
        reviewed = client.get("/api/v1/thresholds").json()["reviewed"]
        assert sorted(r["verdict"] for r in reviewed) == ["defective", "good", "unsure"]


def test_an_uncalibrated_run_gives_scores_without_decisions_until_a_threshold_is_set(tmp_path):
    run = make_run(tmp_path / "bare", calibrated=False)
    with serving(run, tmp_path / "store") as (client, _):
        item = inspect(client, noisy(1)).json()["inspections"][0]
        assert (item["decision"], item["normalized_score"], item["defect_area"]) == (None, None, None)
        assert client.get("/api/v1/inspections?decision=none").json()["total"] == 1
        client.post("/api/v1/thresholds", json={"threshold": 0.5})
        assert inspect(client, noisy(1)).json()["inspections"][0]["decision"] == "defective"


def test_16_bit_grey_rgba_and_tiff_images_are_accepted(tiny_run, tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (36, 30, 3), dtype=np.uint8)
    deep = io.BytesIO()
    Image.fromarray(array[:, :, 0].astype(np.uint16) * 257).save(deep, format="PNG")
    tiff = io.BytesIO()
    Image.fromarray(array[:, :, 0].astype(np.uint16) * 257).save(tiff, format="TIFF")
    images = [deep.getvalue(), encode(array, "L"), encode(array, "RGBA"), tiff.getvalue(),
              encode(array, image_format="JPEG")]
    with serving(tiny_run, tmp_path / "store") as (client, _):
        answer = inspect(client, *images)
        assert answer.status_code == 200, answer.text
        items = answer.json()["inspections"]
        assert all((i["width"], i["height"]) == (30, 36) for i in items)
        big = inspect(client, encode(np.zeros((300, 600, 3), np.uint8))).json()["inspections"][0]["id"]
        thumbnail = client.get(f"/api/v1/inspections/{big}/thumbnail").content
        assert Image.open(io.BytesIO(thumbnail)).size == (160, 80)
        shown = client.get(f"/api/v1/inspections/{items[3]['id']}/image")
        assert shown.headers["content-type"] == "image/png" and Image.open(io.BytesIO(shown.content)).size == (30, 36)
        assert client.get(f"/api/v1/inspections/{items[4]['id']}/image").headers["content-type"] == "image/jpeg"


def _declaring(width: int, height: int) -> bytes:
    """A small PNG of many pixels (a decompression bomb when large)."""
    stream = io.BytesIO()
    Image.new("1", (width, height)).save(stream, format="PNG")
    return stream.getvalue()


@pytest.mark.parametrize(("files", "status", "words"), [
    ([("images", ("a.png", b"", "image/png"))], 400, "images[0] (a.png): empty file"),
    ([("images", ("a.png", noisy(1), "image/png")), ("images", ("b.txt", b"hello", "text/plain"))], 415,
     "images[1] (b.txt): not an image"),
    ([("images", ("cut.png", noisy(1, 64)[:300], "image/png"))], 400, "images[0] (cut.png): truncated"),
    ([("images", ("big.png", noisy(1, 400), "image/png"))], 413, "upload limit"),
    ([("images", ("wide.png", _declaring(1200, 1000), "image/png"))], 413, "1200x1000 pixels, over the limit"),
    ([("images", ("bomb.png", _declaring(20000, 20000), "image/png"))], 413, "over the limit of 1000000 pixels"),
    ([("other", ("a.png", noisy(1), "image/png"))], 400, "images: missing"),
])
def test_bad_uploads_get_a_4xx_naming_the_part_and_leave_nothing_behind(tiny_run, tmp_path, files, status, words):
    store = tmp_path / "store"
    with serving(tiny_run, store, max_upload_mb=0.1, max_pixels=10**6) as (client, _):
        answer = client.post("/api/v1/inspect", files=files)
        assert answer.status_code == status and words in answer.json()["detail"]
        assert client.get("/api/v1/inspections").json()["total"] == 0
    assert stored_files(store) == []


def test_requests_that_are_not_multipart_images_are_refused(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store", max_upload_mb=0.1, max_images=2) as (client, _):
        assert client.post("/api/v1/inspect", json={"images": []}).status_code == 415
        text_part = client.post("/api/v1/inspect", files=[("x", ("a", b"1"))], data={"images": "abc"})
        assert text_part.status_code == 400 and "images[0]: a text field" in text_part.json()["detail"]
        too_many = client.post("/api/v1/inspect", files=[("images", (f"{i}.png", noisy(i))) for i in range(3)])
        assert too_many.status_code == 400
        huge = client.post("/api/v1/inspect", content=b"x" * 3 * 2**20,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert huge.status_code == 413
        streamed = client.post("/api/v1/inspect", content=iter([b"x" * 2**20] * 3),
                               headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert streamed.status_code == 413 and "size limit" in streamed.json()["detail"]
        long_source = inspect(client, noisy(1), source="s" * 201)
        assert long_source.status_code == 400 and "source" in long_source.json()["detail"]


def test_a_retried_request_with_the_same_idempotency_key_gets_the_first_answer(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        first = inspect(client, noisy(1), headers={"Idempotency-Key": "cam1-000042"})
        again = inspect(client, noisy(2), headers={"Idempotency-Key": "cam1-000042"})
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        other = inspect(client, noisy(1), headers={"Idempotency-Key": "cam1-000043"})
        assert other.json()["inspections"][0]["id"] != first.json()["inspections"][0]["id"]
        assert client.get("/api/v1/inspections").json()["total"] == 2


def test_a_retry_while_the_first_request_is_in_flight_is_told_to_wait(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, service):
        assert service.claim_key("cam1-7")
        answer = inspect(client, noisy(1), headers={"Idempotency-Key": "cam1-7"})
        assert answer.status_code == 409 and "in progress" in answer.json()["detail"]
        service.release_key("cam1-7")
        assert inspect(client, noisy(1), headers={"Idempotency-Key": "cam1-7"}).status_code == 200


def test_with_a_token_every_request_but_health_and_the_page_shell_needs_it(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store", token="s3cret") as (client, _):
        assert client.get("/api/v1/health").json()["ready"] is True
        assert client.get("/").status_code == 200 and client.get("/static/page.js").status_code == 200
        for path in ("/api/v1/inspections", "/api/v1/metrics", "/api/v1/thresholds", "/docs", "/openapi.json"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert inspect(client, noisy(1)).status_code == 401
        assert client.get("/api/v1/inspections", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert inspect(client, noisy(1), headers=good).status_code == 200
        assert client.get("/api/v1/inspections", headers=good).json()["total"] == 1


def test_without_a_token_nothing_is_asked(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        assert client.get("/api/v1/metrics").status_code == 200
        assert 'data-token-required="false"' in client.get("/").text
        assert "/api/v1/inspect" in client.get("/openapi.json").text


def test_health_and_metrics_report_queue_counts_and_latency(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store") as (client, _):
        inspect(client, noisy(1), flat())
        health = client.get("/api/v1/health").json()
        assert health["model_loaded"] and health["queue_depth"] == 0 and health["queue_capacity"] == 64
        metrics = client.get("/api/v1/metrics").json()
        assert metrics["counts"]["inspections"] == 2 and metrics["latency_ms"]["p50"] > 0
        assert metrics["inspections"]["last_hour"] == {"total": 2, "good": 1, "defective": 1, "undecided": 0}
        assert metrics["batches"]["mean_size"] == 2 and metrics["webhook"]["dropped"] == 0


def test_concurrent_requests_share_one_forward_pass(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store", batch_size=8) as (client, service):
        gated = service.model.predictor = GatedPredictor(service.model.predictor)
        answers: list[int] = []
        threads = [threading.Thread(target=lambda i=i: answers.append(inspect(client, noisy(i)).status_code))
                   for i in range(5)]
        threads[0].start()
        assert gated.entered.wait(10)
        for thread in threads[1:]:
            thread.start()
        while service.batcher.queued() < 4:
            threading.Event().wait(0.01)
        gated.gate.set()
        for thread in threads:
            thread.join()
        assert answers == [200] * 5
        assert list(service.metrics.batch_sizes) == [1, 4]


def test_a_full_queue_answers_503_with_retry_after(tiny_run, tmp_path):
    with serving(tiny_run, tmp_path / "store", queue_depth=1, batch_size=1) as (client, service):
        gated = service.model.predictor = GatedPredictor(service.model.predictor)
        answers: list[int] = []
        busy = threading.Thread(target=lambda: answers.append(inspect(client, noisy(1)).status_code))
        busy.start()
        assert gated.entered.wait(10)
        waiting = threading.Thread(target=lambda: answers.append(inspect(client, noisy(2)).status_code))
        waiting.start()
        while service.batcher.queued() < 1:
            threading.Event().wait(0.01)
        refused = inspect(client, noisy(3))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        gated.gate.set()
        busy.join()
        waiting.join()
        assert answers == [200, 200] and client.get("/api/v1/inspections").json()["total"] == 2
        assert client.get("/api/v1/metrics").json()["counts"]["rejected_queue_full"] == 1


def test_a_request_past_its_deadline_gets_503_and_no_row(tiny_run, tmp_path):
    store = tmp_path / "store"
    with serving(tiny_run, store, deadline_ms=1000) as (client, service):
        gated = service.model.predictor = GatedPredictor(service.model.predictor)
        late = inspect(client, noisy(1))
        assert late.status_code == 503 and "deadline" in late.json()["detail"]
        gated.gate.set()
        queued_late = inspect(client, noisy(2))
        assert queued_late.status_code == 200
        assert client.get("/api/v1/inspections").json()["total"] == 1
        assert client.get("/api/v1/metrics").json()["counts"]["deadline_missed"] == 1
    assert len(stored_files(store)) == 4


def test_a_model_failure_answers_500_and_the_worker_goes_on(tiny_run, tmp_path):
    class Failing:
        def __init__(self, predictor) -> None:
            self.predictor, self.loaded = predictor, predictor.loaded

        def __call__(self, images, valid):
            raise RuntimeError("out of memory")

    with serving(tiny_run, tmp_path / "store") as (client, service):
        working = service.model.predictor
        service.model.predictor = Failing(working)
        failed = inspect(client, noisy(1))
        assert failed.status_code == 500 and "RuntimeError: out of memory" in failed.json()["detail"]
        service.model.predictor = working
        assert inspect(client, noisy(1)).status_code == 200
        assert client.get("/api/v1/inspections").json()["total"] == 1


@pytest.mark.parametrize("name", methods.available())
def test_every_method_serves(name, tmp_path):
    method = methods.get(name)
    model = method(method.Options.from_dict(method.presets.get("demo", {})))
    save_model(tmp_path / "run" / "model.pt", model, ModelInfo.of(model, 32))
    with serving(tmp_path / "run", tmp_path / "store") as (client, _):
        answer = inspect(client, noisy(1), flat())
        assert answer.status_code == 200, answer.text
        assert all(isinstance(item["score"], float) for item in answer.json()["inspections"])
        assert client.get("/api/v1/model").json()["method"] == name


def test_the_page_escapes_what_it_shows(tmp_path):
    run = make_run(tmp_path / "<img src=x onerror=alert(1)>")
    with serving(run, tmp_path / "store") as (client, _):
        page = client.get("/").text
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        script = client.get("/static/page.js").text
        assert "innerHTML" not in script and "textContent" in script
