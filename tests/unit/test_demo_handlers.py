"""The demo `story` kind returns the same result from the queue worker's demo handler and from
the dev server's local pipeline: `{"story": ...}` about `params.prompt`."""

from __future__ import annotations

from shared.dev.demo_handlers import story
from shared.dev.local_pipeline import demo_result


def test_both_demo_pipelines_tell_the_same_story_about_the_prompt():
    job = {"id": "j", "kind": "story", "attempt": 1}
    job["params"] = {"prompt": "a lighthouse keeper", "step_seconds": 0}
    progress: list[float] = []

    told = story(job, progress.append)

    assert told == demo_result(job)
    assert list(told) == ["story"] and "a lighthouse keeper" in told["story"]
    assert progress[-1] == 100
