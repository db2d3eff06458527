"""Model cards: the YAML fields a machine reads back, licenses of the bases, the context's JSON."""

from huggingface_hub import ModelCard

from pecn_ml.model_cards import (STANDIN_LICENSE_NAME, BaseWeights, CardContext, base_license, build_card,
                                 read_card, write_card)


def _card(bases, **kw):
    context = CardContext(run_id="r1", data_versions={"annotations": "v1"}, bases=bases, extra={"variant": "next1"})
    return build_card(title="t", kind="instruct-pix2pix", description="d", context=context,
                      training_config={"lr": 1e-3}, seed=3, loss_summary={"final_loss": 0.5},
                      library_name="diffusers", **kw)


def test_a_card_holds_every_named_field_and_reads_back(tmp_path):
    bases = (BaseWeights("resnet_base", "microsoft/resnet-50", "c" * 40, "d" * 64, "apache-2.0"),
             BaseWeights("clip_text_base", "openai/clip-vit-base-patch32", "e" * 40, "f" * 64, "unknown"))
    write_card(tmp_path, _card(bases))
    data = read_card(tmp_path).data.to_dict()
    assert {"license", "base_model", "base_weights", "data_versions", "training_config", "seed", "variant",
            "dagster_run_id", "loss_summary"} <= set(data)
    assert data["base_model"] == ["microsoft/resnet-50", "openai/clip-vit-base-patch32"]
    # bases under different (or unknown) licenses: "other", named per base
    assert data["license"] == "other" and "resnet_base: apache-2.0" in data["license_name"]
    assert data["base_weights"][0]["revision"] == "c" * 40 and data["seed"] == 3
    text = (tmp_path / "README.md").read_text()
    assert "| Dagster run | r1 |" in text and "microsoft/resnet-50 @ " + "c" * 40 in text


def test_licenses_come_from_the_base_folders_card_then_the_hub_table(tmp_path):
    assert base_license(None, "timbrooks/instruct-pix2pix") == "mit"
    assert base_license(None, "someone/else") == "unknown"
    standin = build_card(title="s", kind="standin-resnet", description="d", context=CardContext(),
                         training_config={}, seed=0, loss_summary={}, library_name="transformers",
                         own_license=STANDIN_LICENSE_NAME)
    write_card(tmp_path, standin)
    assert ModelCard.load(tmp_path / "README.md").data.license == "other"
    assert base_license(tmp_path, "stand-in for microsoft/resnet-50") == STANDIN_LICENSE_NAME
    assert base_license(tmp_path / "nowhere", "microsoft/resnet-50") == "apache-2.0"


def test_the_context_travels_as_json():
    from pecn_ml.utils.codec import from_json, to_json

    context = CardContext(run_id="r", data_versions={"a": "1"},
                          bases=(BaseWeights("pix2pix_base", "x", "rev", "sha", "mit"),), extra={"variant": "next5"})
    assert from_json(CardContext, to_json(context)) == context
    assert from_json(CardContext, to_json(CardContext())) == CardContext()
