"""The one JSON codec of frozen dataclasses: every profile (all trainer configs inside) and every
trainer config round-trips; a value that does not fit is refused with its field named."""

import dataclasses
import json
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

import pytest

from pecn_ml.model_cards import BaseWeights, CardContext
from pecn_ml.models.pacnet import PacNetConfig
from pecn_ml.profiles import PROFILES, get_profile
from pecn_ml.training.tracking import TrackingConfig
from pecn_ml.utils.codec import CodecError, decode, from_json, to_json


@dataclasses.dataclass(frozen=True)
class Inner:
    path: Path
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner
    pairs: tuple[tuple[int, str], ...] = ()
    by_id: Mapping[int, float] = dataclasses.field(default_factory=dict)
    maybe: Optional[Inner] = None
    either: Union[bool, Literal["auto"]] = True
    items: Sequence[Inner] = ()
    names: list[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_and_its_trainer_configs_round_trip(name):
    profile = get_profile(name)
    assert from_json(type(profile), to_json(profile)) == profile
    configs = [v for v in vars(profile).values() if dataclasses.is_dataclass(v)]
    assert {type(c).__name__ for c in configs} >= {"Pix2PixTrainConfig", "PacNetTrainConfig"}
    for config in configs:
        assert from_json(type(config), to_json(config)) == config


def test_the_other_configs_and_nested_types_round_trip():
    for obj in (PacNetConfig(head="classification", image_size=48), TrackingConfig("mlflow", tags={"k": "v"}),
                CardContext("run", {"a": "1"}, (BaseWeights("pix2pix_base", "hub/x", "abc"),), {"n": [1, 2]}),
                Outer(Inner(Path("/x"), "b"), ((1, "a"),), {3: 0.5}, Inner(Path("y")), "auto",
                      (Inner(Path("z")),), ["q"])):
        back = from_json(type(obj), to_json(obj))
        assert back == obj and type(back) is type(obj)
    back = from_json(Outer, to_json(Outer(Inner(Path("/x")), items=(Inner(Path("z")),))))
    assert isinstance(back.inner.path, Path) and isinstance(back.items, tuple) and back.either is True


@pytest.mark.parametrize("patch, message", [
    ({"inner": {"path": 3}}, r"Outer\.inner\.path: expected Path, got int 3"),
    ({"inner": {"path": "p", "mode": "c"}}, r"Outer\.inner\.mode: expected one of \['a', 'b'\]"),
    ({"inner": {"path": "p"}, "either": "sometimes"}, r"Outer\.either: fits none of"),
    ({"inner": {"path": "p"}, "pairs": [[1, "a", 2]]}, r"Outer\.pairs\[0\]: expected 2 items"),
    ({"inner": {"path": "p"}, "by_id": {"x": 1.0}}, r"Outer\.by_id: key 'x' is not an integer"),
    ({"inner": {"path": "p"}, "names": [1]}, r"Outer\.names\[0\]: expected str"),
    ({"inner": {"path": "p"}, "extra": 1}, r"Outer: unknown Outer fields \['extra'\]"),
    ({}, r"Outer: missing Outer fields \['inner'\]"),
])
def test_a_value_that_does_not_fit_is_refused_naming_the_field(patch, message):
    with pytest.raises(CodecError, match=message):
        from_json(Outer, json.dumps(patch))


def test_unknown_fields_can_be_dropped_instead_of_refused():
    value = {"inner": {"path": "p", "old": 1}, "maybe": {"path": "q", "old": 2}, "old": 3}
    assert decode(Outer, value, ignore_unknown=True) == Outer(Inner(Path("p")), maybe=Inner(Path("q")))
    with pytest.raises(CodecError, match=r"Outer: unknown Outer fields \['old'\]"):
        decode(Outer, value, "Outer")


def test_trainer_configs_refuse_wrong_types_and_their_own_bad_values():
    config = json.loads(to_json(get_profile("demo").pix2pix_train))
    for field, value, message in [("learning_rate", "fast", r"learning_rate: expected float, got str"),
                                  ("train_batch_size", 2.5, r"train_batch_size: expected int, got float"),
                                  ("cache_latents", 1, r"cache_latents: expected bool, got int"),
                                  ("mixed_precision", "fp32", r"mixed_precision: expected one of"),
                                  ("learning_rate", -1.0, r"learning_rate must be > 0")]:
        with pytest.raises(CodecError, match=message):
            from_json(type(get_profile("demo").pix2pix_train), json.dumps({**config, field: value}))
