"""A person in CLEAN's loop (core.interaction): the driver asks after the dirty image (and
after each major cycle if told to) and takes the answer's niter, threshold, mask, or stop."""

from __future__ import annotations

import numpy as np
import pytest

from radps_flows.core.imager import make_clean_image
from radps_flows.core.interaction import CleanAnswer, CleanCheckpoint, Interaction
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set

CELL_ARCSEC = 4.0
N = 128
SOURCES = [(1.0, 0, 0), (0.6, 12, -7)]
"""(flux, east offset, north offset) in cells."""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory):
    spec = SynthesisSpec(
        n_antennas=12,
        n_times=16,
        n_channels=2,
        integration_s=300.0,
        sources=tuple(
            PointSource(f, offset_ra_arcsec=e * CELL_ARCSEC, offset_dec_arcsec=n * CELL_ARCSEC)
            for f, e, n in SOURCES
        ),
    )
    result = synthesize_processing_set(tmp_path_factory.mktemp("ask") / "sky", spec)
    return open_processing_set(result.path)


class Person:
    """Answers the checkpoints in turn with ``answers`` (then: go on as it stands)."""

    def __init__(self, *answers: CleanAnswer):
        self.answers = list(answers)
        self.seen: list[CleanCheckpoint] = []

    def __call__(self, checkpoint: CleanCheckpoint) -> CleanAnswer:
        self.seen.append(checkpoint)
        return self.answers.pop(0) if self.answers else CleanAnswer()


def clean(datasets, person: Person | None = None, **settings):
    interaction = None
    if person is not None:
        interaction = Interaction(
            person,
            after_each_cycle=settings.pop("after_each_cycle", False),
            keeps_workers=settings.pop("keeps_workers", True),
        )
    base = {"niter": 2000, "gain": 0.2, "threshold_jy": 1e-4}
    return make_clean_image(
        datasets,
        imsize=N,
        cell_arcsec=CELL_ARCSEC,
        interaction=interaction,
        **{**base, **settings},
    )


def test_asked_after_the_dirty_image_with_what_a_person_needs_and_its_niter_is_taken(datasets):
    person = Person(CleanAnswer(niter=40))
    images = clean(datasets, person)
    (checkpoint,) = person.seen
    assert (checkpoint.cycle, checkpoint.components, checkpoint.niter) == (0, 0, 2000)
    assert checkpoint.peak == pytest.approx(1.0, rel=0.05)  # the brighter source
    residual = checkpoint.images["residual"].values
    np.testing.assert_array_equal(residual, checkpoint.images["dirty"].values)
    assert checkpoint.images["psf"].values.max() == pytest.approx(1.0)
    assert checkpoint.images["residual"].attrs["beam_major_arcsec"] > 0  # previews draw it
    assert images.attrs["clean_iterations"] == 40
    assert images.attrs["clean_answers"] == [{"cycle": 0, "components": 0, "niter": 40}]


def test_stop_at_the_first_pause_writes_the_dirty_image_as_it_is(datasets):
    images = clean(datasets, Person(CleanAnswer(stop=True)))
    assert images.attrs["clean_iterations"] == 0
    assert not images["model"].values.any()
    np.testing.assert_array_equal(images["residual"].values, images["dirty"].values)
    assert images.attrs["clean_answers"] == [{"cycle": 0, "components": 0, "action": "stop"}]


def test_a_threshold_and_a_mask_from_the_answer_steer_clean(datasets):
    # the fainter source at (east 12, north -7): a box around it only
    y, x = N // 2 - 7, N // 2 - 12
    box = [x - 3, y - 3, x + 3, y + 3]
    mask = np.zeros((N, N), dtype=bool)
    mask[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
    answer = CleanAnswer(threshold_jy=0.05, mask=mask, mask_boxes=[box], set_mask=True)
    images = clean(datasets, Person(answer))
    model = images["model"].values
    assert model[~mask].sum() == 0  # nothing outside the box
    assert model[mask].sum() > 0.3  # the source there (the bright one's sidelobes too)
    assert np.abs(images["residual"].values[mask]).max() < 0.05 * 1.05  # down to the threshold
    assert images.attrs["clean_threshold"] == pytest.approx(0.05)
    assert images.attrs["clean_answers"][0]["mask"] == [box]


def test_asked_after_each_cycle_and_stopped_after_the_first_with_an_exact_residual(datasets):
    person = Person(CleanAnswer(), CleanAnswer(stop=True))
    images = clean(datasets, person, after_each_cycle=True)
    assert [c.cycle for c in person.seen] == [0, 1]
    found = person.seen[1].components
    assert found > 0 and images.attrs["clean_iterations"] == found
    assert images.attrs["clean_major_cycles"] == 1
    # as CLEAN run to that many components at once: the same model, and the residual exact
    # (the first cycle's rough one was imaged again before stopping)
    plain = clean(datasets, niter=found)
    np.testing.assert_allclose(images["model"].values, plain["model"].values, atol=1e-12)
    np.testing.assert_allclose(images["residual"].values, plain["residual"].values, atol=1e-6)


def test_workers_let_go_while_asking_give_the_same_images(datasets):
    """An asker that lets the workers go: the driver prepares its blocks again after."""
    kept = clean(datasets, Person(CleanAnswer(niter=60)), after_each_cycle=True)
    let_go = clean(
        datasets, Person(CleanAnswer(niter=60)), after_each_cycle=True, keeps_workers=False
    )
    for name in ("model", "residual", "restored"):
        np.testing.assert_allclose(let_go[name].values, kept[name].values, atol=1e-9)
    assert let_go.attrs["clean_iterations"] == kept.attrs["clean_iterations"] == 60
