"""natix_miner.training.splits: grouped, stratified, per data folder, deterministic by seed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from natix_miner.training.data import Sample
from natix_miner.training.splits import (
    fold_assignment,
    grouped_folds,
    grouped_split,
    repeated_grouped_folds,
)


def synth(n_groups=20, per_group=3, pos_every=4, dataset="d") -> list[Sample]:
    out = []
    for g in range(n_groups):
        for j in range(per_group):
            label = int(bool(pos_every) and g % pos_every == 0)
            out.append(Sample(key=f"{dataset}/{g}/{j}", label=label, target=float(label), source=f"{dataset}/s",
                              group=f"{dataset}/g{g}", dataset=dataset))
    return out


def _groups(xs):
    return {s.group for s in xs}


def test_grouped_split_keeps_groups_whole_stratifies_and_is_deterministic():
    samples = synth()
    train, test = grouped_split(samples, 0.25, seed=0)
    assert len(train) + len(test) == len(samples) and _groups(train).isdisjoint(_groups(test))
    assert Counter(s.label for s in test)[1] >= 1 and Counter(s.label for s in train)[1] >= 1
    assert 0.15 <= len(test) / len(samples) <= 0.35
    assert grouped_split(samples, 0.25, seed=0) == (train, test)
    assert {s.key for s in grouped_split(samples, 0.25, seed=1)[1]} != {s.key for s in test}
    assert grouped_split(samples, 0, seed=0) == (samples, [])
    with pytest.raises(ValueError):
        grouped_split(samples, 1.0, seed=0)


def test_grouped_split_per_data_folder_and_unsplittable_folders_train_only():
    samples = synth(dataset="a") + synth(n_groups=2, dataset="tiny") + synth(pos_every=0, dataset="neg")
    train, test = grouped_split(samples, 0.25, seed=0)
    assert {s.dataset for s in test} == {"a"}  # 'tiny' has 2 groups < 4 folds, 'neg' a single class
    assert {s.dataset for s in train} == {"a", "tiny", "neg"}


def test_grouped_folds_cover_every_sample_once_and_never_straddle():
    samples = synth(dataset="a") + synth(n_groups=9, dataset="b")
    folds = grouped_folds(samples, 5, seed=7)
    assert len(folds) == 5
    tested = Counter(s.key for _, te in folds for s in te)
    assert set(tested) == {s.key for s in samples} and set(tested.values()) == {1}
    for tr, te in folds:
        assert _groups(tr).isdisjoint(_groups(te)) and len(tr) + len(te) == len(samples)
        assert any(s.label == 1 for s in te)  # stratified: positives in every fold (5 positive groups in a)
    assert grouped_folds(samples, 5, seed=7) == folds
    assert [len(te) for _, te in grouped_folds(samples, 5, seed=8)] != [] and \
        fold_assignment(samples, 5, 8).tolist() != fold_assignment(samples, 5, 7).tolist()
    with pytest.raises(ValueError):
        grouped_folds(samples, 1, seed=0)


def test_folder_with_fewer_groups_than_folds_and_unsplittable_folder():
    samples = synth(n_groups=3, pos_every=2, dataset="small") + synth(n_groups=1, dataset="one")
    fold = fold_assignment(samples, 5, seed=0)
    small = [f for s, f in zip(samples, fold) if s.dataset == "small"]
    assert sorted(set(small)) == [0, 1, 2]  # 3 groups -> 3 folds
    assert {f for s, f in zip(samples, fold) if s.dataset == "one"} == {-1}
    folds = grouped_folds(samples, 5, seed=0)
    assert len(folds) == 3 and all(any(s.dataset == "one" for s in tr) for tr, _ in folds)


def test_repeated_folds_differ_between_repeats_and_reproduce():
    samples = synth(n_groups=30)
    reps = repeated_grouped_folds(samples, 3, 2, seed=0)
    assert len(reps) == 2 and all(len(r) == 3 for r in reps)
    assert [sorted(s.key for s in te) for _, te in reps[0]] != [sorted(s.key for s in te) for _, te in reps[1]]
    assert repeated_grouped_folds(samples, 3, 2, seed=0) == reps


GTSDB = Path("/work/shared/data/gtsdb-dev")
PROVENANCE = Path(__file__).resolve().parents[2] / "natix_miner" / "assets" / "lite0_head" / "provenance.json"


@pytest.mark.skipif(not GTSDB.is_dir(), reason="the shared GTSDB development set is not on this machine")
def test_reproduces_the_committed_heads_held_out_split():
    """The package's split is the one the embedded head was trained with (provenance.json)."""
    from natix_miner.training.data import scan_data

    prov = json.loads(PROVENANCE.read_text())
    _, test = grouped_split(scan_data([str(GTSDB)], group_block=prov["args"]["group_block"]),
                                prov["args"]["test_frac"], prov["args"]["seed"])
    assert sorted(s.key for s in test) == prov["split"]["heldout_items"]


def _real_and_i2i(n_real=40, n_i2i=25):
    """40 real images (own groups) and 25 i2i children in another folder, each in its parent's group."""
    real = [Sample(key=f"real/{i}", label=i % 2, target=float(i % 2), source="real/x", group=f"real/g{i}",
                   dataset="real") for i in range(n_real)]
    i2i = [Sample(key=f"synth/{i}", label=i % 2, target=float(i % 2), source="synth/x", group=f"real/g{i}",
                  dataset="synth", condition="i2i") for i in range(n_i2i)]
    return real + i2i


def _straddling(train, test):
    return {s.group for s in train} & {s.group for s in test}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_shared_across_folders_never_straddle_a_split_or_fold(seed):
    samples = _real_and_i2i()
    train, test = grouped_split(samples, 0.2, seed=seed)
    assert test and not _straddling(train, test)
    assert {s.dataset for s in test} == {"real", "synth"}  # the joined folders are still split, not only trained
    folds = grouped_folds(samples, 5, seed=seed)
    assert len(folds) == 5 and sum(len(te) for _, te in folds) == len(samples)
    for tr, te in folds:
        assert not _straddling(tr, te)
    # folders that share no group are still split each on its own
    other = synth(dataset="z")
    assert {s.dataset for s in grouped_split(samples + other, 0.2, seed)[1]} == {"real", "synth", "z"}


@pytest.mark.parametrize("k", [2, 5])
def test_small_folders_degrade_instead_of_raising(k):
    # 3 roadwork + 3 no_roadwork, 6 groups: sklearn's StratifiedGroupKFold(5) raises "n_splits=5 cannot be greater
    # than the number of members in each class"
    small = [Sample(key=f"s/{i}", label=int(i < 3), target=float(i < 3), source="s/x", group=f"s/g{i}",
                    dataset="s") for i in range(6)]
    samples = synth(dataset="a") + small
    train, test = grouped_split(samples, 0.2, seed=0)
    assert len(train) + len(test) == len(samples) and {s.dataset for s in test} == {"a", "s"}
    folds = grouped_folds(samples, 5, seed=0)
    tested = Counter(s.key for _, te in folds for s in te)
    assert set(tested) == {s.key for s in samples} and set(tested.values()) == {1}
    fold_assignment(small, k, seed=3)  # no ValueError


def test_train_py_on_a_folder_too_small_to_stratify_trains_instead_of_a_traceback(tmp_path):
    from natix_miner.training.cli import main
    from tests.training.train_helpers import make_folder, train_args

    data = make_folder(tmp_path / "tiny", n_per_class=3)  # 3 per class < the 5 folds of --test-frac 0.2
    assert main(train_args(data, tmp_path / "run", "test_convnext", "--epochs", "1")) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == 6 and m["n_test"] >= 1
