import pytest
import torch

from adaclip_rl.rollout import BehaviourSample, collate_behaviour, pad_versions


def test_extend_stamps_versions_and_counts_segments():
    s = BehaviourSample(prompt_ids=[1, 2])
    s.extend([5, 6], [-0.1, -0.2], version=3)
    s.extend([7], [-0.3], version=4)
    assert s.completion_ids == [5, 6, 7] and s.versions == [3, 3, 4] and s.segments == 2
    assert s.oldest_version() == 3
    assert BehaviourSample.from_dict(s.to_dict()) == s


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="same length"):
        BehaviourSample(prompt_ids=[1], completion_ids=[1, 2], logprobs=[0.0], versions=[0, 0])
    with pytest.raises(ValueError, match="log-probs"):
        BehaviourSample(prompt_ids=[1]).extend([1, 2], [0.0], 0)


def test_collate_pads_left_prompts_right_completions():
    a = BehaviourSample(
        prompt_ids=[1, 2, 3], completion_ids=[9], logprobs=[-1.0], versions=[2], finished=True
    )
    b = BehaviourSample(
        prompt_ids=[4], completion_ids=[8, 7, 6], logprobs=[-0.5, -0.6, -0.7], versions=[0, 1, 1]
    )
    out = collate_behaviour([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert out["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert out["completion_ids"].tolist() == [[9, 0, 0], [8, 7, 6]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["behaviour_versions"].tolist() == [[2, -1, -1], [0, 1, 1]]
    torch.testing.assert_close(out["behaviour_logprobs"][1], torch.tensor([-0.5, -0.6, -0.7]))
    assert out["finished"].tolist() == [True, False]
    assert pad_versions([[1], [2, 3]]).tolist() == [[1, -1], [2, 3]]


def test_a_segment_interrupted_before_its_first_token_is_not_counted():
    """An empty segment (interrupted before generating) used to use up one of partial_max_segments."""
    s = BehaviourSample(prompt_ids=[1])
    s.extend([], [], version=2)
    assert s.segments == 0 and s.versions == []
    s.extend([5], [-0.1], version=3)
    assert s.segments == 1 and s.versions == [3]
