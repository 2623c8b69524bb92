import pytest

from moma.corpora.base import Utterance
from moma.data.protocols import (
    Fold,
    ProtocolSpec,
    SpeakerLeakageError,
    check_speaker_disjoint,
    choose_validation_speakers,
    make_folds,
    rotate_validation,
    select_folds,
    validate_fold,
)


def corpus(n_speakers=10, per_speaker=3, sessions=None):
    utts = []
    for s in range(n_speakers):
        spk = f"s{s:02d}"
        for i in range(per_speaker):
            utts.append(Utterance(id=f"{spk}_{i}", path=f"/x/{spk}_{i}.wav", speaker=spk, label="a" if i % 2 else "b",
                                  gender="F" if s % 2 else "M", session=sessions[s] if sessions else ""))
    return utts


def speakers_of(ids, utts):
    by_id = {u.id: u.speaker for u in utts}
    return {by_id[i] for i in ids}


def test_loso_has_one_fold_per_speaker_and_validation_from_training_speakers():
    utts = corpus()
    folds = make_folds(utts, "loso", val_speakers=2, seed=3)
    assert len(folds) == 10
    assert sorted(f.test_speakers[0] for f in folds) == sorted({u.speaker for u in utts})
    for f in folds:
        test = speakers_of(f.test, utts)
        val = speakers_of(f.val, utts)
        train = speakers_of(f.train, utts)
        assert len(test) == 1 and len(val) == 2
        assert not (test & val) and not (test & train) and not (val & train)
        assert len(f.train) + len(f.val) + len(f.test) == len(utts)
        genders = {next(u.gender for u in utts if u.speaker == s) for s in val}
        assert genders == {"F", "M"}  # gender-balanced validation


def test_session_holdout_defaults_to_last_session_and_loso_session_covers_all():
    sessions = ["Ses01", "Ses01", "Ses02", "Ses02", "Ses03", "Ses03", "Ses04", "Ses04", "Ses05", "Ses05"]
    utts = corpus(sessions=sessions)
    (fold,) = make_folds(utts, "session-holdout", val_speakers=2)
    assert fold.name == "session-Ses05"
    assert speakers_of(fold.test, utts) == {"s08", "s09"}
    assert not speakers_of(fold.val, utts) & {"s08", "s09"}
    folds = make_folds(utts, "loso-session")
    assert [f.name for f in folds] == [f"session-Ses0{i}" for i in range(1, 6)]


def test_speaker_kfold_partitions_speakers():
    utts = corpus(n_speakers=24, per_speaker=1)
    folds = make_folds(utts, "speaker-kfold", k=4, val_speakers=1)
    tested = [s for f in folds for s in f.test_speakers]
    assert sorted(tested) == sorted({u.speaker for u in utts})
    assert all(len(f.test_speakers) == 6 for f in folds)


def test_speaker_groups_are_runs_of_consecutive_speakers():
    utts = corpus(n_speakers=16, per_speaker=2)
    folds = make_folds(utts, "speaker-groups", k=4, val_speakers=2)
    assert [f.test_speakers for f in folds] == [[f"s{i:02d}" for i in range(a, a + 4)] for a in (0, 4, 8, 12)]
    assert all(not set(f.val_speakers) & set(f.test_speakers) and len(f.val_speakers) == 2 for f in folds)
    uneven = make_folds(corpus(n_speakers=10, per_speaker=1), "speaker-groups", k=4, val_speakers=1)
    assert [len(f.test_speakers) for f in uneven] == [3, 3, 2, 2]


def test_validation_speakers_grow_until_they_hold_enough_utterances():
    utts = corpus(n_speakers=10, per_speaker=3)
    plain = choose_validation_speakers(utts, 2, seed=0)
    assert plain == choose_validation_speakers(utts, 2, seed=0, min_utterances=0)  # off: the same two
    grown = choose_validation_speakers(utts, 2, seed=0, min_utterances=10)  # 3 utterances a speaker: 4 speakers
    assert len(grown) == 4 and set(plain) <= set(grown)
    assert len(choose_validation_speakers(utts, 2, seed=0, min_utterances=10**6)) == 9  # one speaker still trains
    folds = make_folds(utts, "loso", val_speakers=2, val_min=7)
    assert all(len(f.val) >= 7 and not set(f.val_speakers) & set(f.test_speakers) for f in folds)


def test_leakage_is_refused_with_speaker_names():
    utts = corpus(n_speakers=3)
    with pytest.raises(SpeakerLeakageError, match="s01"):
        check_speaker_disjoint(utts[:4], utts[3:6])
    bad = Fold("bad", train=[utts[0].id, utts[3].id], val=[], test=[utts[4].id])  # s01 both sides
    with pytest.raises(SpeakerLeakageError, match="s01"):
        validate_fold(bad, utts)


def test_session_split_with_shared_speaker_is_refused():
    utts = corpus(n_speakers=4, sessions=["A", "A", "B", "B"])
    utts.append(Utterance(id="leak", path="/x", speaker="s00", label="a", session="B"))
    with pytest.raises(SpeakerLeakageError, match="s00"):
        make_folds(utts, "session-holdout")


def test_validation_choice_is_seeded_and_leaves_training_speakers():
    utts = corpus(n_speakers=3)
    a = choose_validation_speakers(utts, 5, seed=1)
    assert len(a) == 2  # never all speakers
    assert a == choose_validation_speakers(utts, 5, seed=1)
    utts = corpus(n_speakers=10)
    picks = {tuple(choose_validation_speakers(utts, 2, seed=s)) for s in range(10)}
    assert len(picks) > 1


def test_unknown_protocol_and_predefined():
    utts = corpus()
    with pytest.raises(ValueError, match="unknown protocol"):
        make_folds(utts, "random")
    (f,) = make_folds(utts, "predefined", test_speakers=["s00", "s01"], val_speakers=2)
    assert f.test_speakers == ["s00", "s01"]
    with pytest.raises(ValueError, match="not in the manifest"):
        make_folds(utts, "predefined", test_speakers=["nobody"])


def test_protocol_all_trains_on_everyone_but_validation():
    utts = corpus()
    (f,) = make_folds(utts, "all", val_speakers=2)
    assert f.test == [] and len(f.val_speakers) == 2
    assert len(f.train) + len(f.val) == len(utts)


def test_rotated_validation_keeps_the_test_side_and_moves_validation_over_training_speakers():
    utts = corpus()  # 10 speakers: a LOSO fold has 9 on its training side
    fold = make_folds(utts, "loso", val_speakers=2, seed=0)[0]
    side = set(fold.train + fold.val)
    vals = []
    for m in range(6):
        r = rotate_validation(fold, utts, m, seed=5)
        assert r.test == fold.test and r.test_speakers == fold.test_speakers and set(r.train + r.val) == side
        val = speakers_of(r.val, utts)
        assert val == set(r.val_speakers) and len(val) == 2 and not val & speakers_of(r.train, utts)
        assert {next(u.gender for u in utts if u.speaker == s) for s in val} == {"F", "M"}
        vals.append(frozenset(val))
    assert rotate_validation(fold, utts, 0, seed=5) is fold
    # the first four members validate on disjoint pairs (8 of the 9 speakers); then it starts over
    assert len(set().union(*vals[:4])) == 8
    assert rotate_validation(fold, utts, 4, seed=5).val == rotate_validation(fold, utts, 4, seed=5).val
    no_val = make_folds(utts, "loso", val_speakers=0)[0]
    assert rotate_validation(no_val, utts, 2) is no_val


# ------------------------------------------------------------------ protocols on a pool of corpora


def _pool() -> list:
    from moma.corpora.base import Utterance

    utts = []
    for corpus, speakers in (("alpha", ["a1", "a2", "a3", "a4"]), ("beta", ["b1", "b2", "b3", "b4", "b5"])):
        for s in speakers:
            for j, lab in enumerate(["angry", "sad"]):
                utts.append(Utterance(id=f"{corpus}.{s}-{j}", path="x.wav", speaker=f"{corpus}.{s}", label=lab,
                                      corpus=corpus, gender="F" if s[-1] in "13" else "M"))
    return utts


def test_leave_one_corpus_out():
    utts = _pool()
    folds = make_folds(utts, "loco", val_speakers=2, seed=0)
    assert [f.name for f in folds] == ["corpus-alpha", "corpus-beta"]
    corpus_of = {u.id: u.corpus for u in utts}
    for fold, held in zip(folds, ("alpha", "beta")):
        assert {corpus_of[i] for i in fold.test} == {held}
        assert {corpus_of[i] for i in fold.train + fold.val} == {"alpha", "beta"} - {held}
        assert len(fold.test) == sum(1 for u in utts if u.corpus == held)
    with pytest.raises(ValueError, match="pooled manifest of at least two corpora"):
        make_folds([u for u in utts if u.corpus == "alpha"], "loco")


def test_loso_within_one_corpus_trains_on_the_whole_pool():
    utts = _pool()
    folds = make_folds(utts, "loso", val_speakers=2, seed=0, test_corpus="alpha")
    assert [f.test_speakers for f in folds] == [["alpha.a1"], ["alpha.a2"], ["alpha.a3"], ["alpha.a4"]]
    for fold in folds:
        side = set(fold.train_speakers) | set(fold.val_speakers)
        assert side == {u.speaker for u in utts} - set(fold.test_speakers)  # all of beta trains too
        # validation watches both corpora the model trains on
        assert {s.split(".")[0] for s in fold.val_speakers} == {"alpha", "beta"}
    with pytest.raises(ValueError, match="test corpus 'gamma' not in the manifest"):
        make_folds(utts, "loso", test_corpus="gamma")
    with pytest.raises(ValueError, match="test_corpus is for the loso protocol"):
        make_folds(utts, "speaker-kfold", k=2, test_corpus="alpha")


def test_single_corpus_validation_choice_is_unchanged_by_pool_support():
    """Folds of a one-corpus manifest (every committed run) are exactly what they were."""
    from moma.data.protocols import choose_pool_validation_speakers, choose_validation_speakers

    alpha = [u for u in _pool() if u.corpus == "alpha"]
    for seed in range(5):
        assert choose_pool_validation_speakers(alpha, 2, seed) == choose_validation_speakers(alpha, 2, seed)


def test_select_folds_by_name_or_test_speaker_and_refuses_unknown_names():
    folds = make_folds(corpus(n_speakers=4), "loso", val_speakers=1)
    assert [f.name for f in select_folds(folds, ["spk-s01", "s03"])] == ["spk-s01", "spk-s03"]
    assert select_folds(folds, None) == folds
    with pytest.raises(ValueError, match="no fold matches s09 .folds: spk-s00, spk-s01, spk-s02, spk-s03"):
        select_folds(folds, ["s01", "s09"])  # one typo is not run as a smaller selection


def test_a_protocol_spec_makes_the_folds_its_arguments_name():
    utts = corpus()
    spec = ProtocolSpec("predefined", test_speakers=("s00", "s01"), only_folds=("ignored-here",))
    (f,) = spec.folds(utts, val_speakers=2, seed=3)
    assert f.to_dict() == make_folds(utts, "predefined", test_speakers=["s00", "s01"], val_speakers=2,
                                     seed=3)[0].to_dict()
    kfold = ProtocolSpec("speaker-kfold", k=4).folds(utts, val_speakers=1, seed=0)
    assert [f.name for f in kfold] == [f.name for f in make_folds(utts, "speaker-kfold", k=4, val_speakers=1)]
    assert len(kfold) == 4
