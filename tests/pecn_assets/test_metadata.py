"""Plain artifact metadata -> Dagster metadata values: the typed scores table."""

import dagster as dg

from pecn_assets.metadata import dagster_value
from pecn_ml.artifacts import Table


def test_a_table_becomes_a_typed_dagster_table():
    table = Table([{"eval_set": "basic", "method": "model", "ssim": 0.7071, "psnr": None, "n": 24}],
                  (("eval_set", "string", "eval set"), ("method", "string", "who"), ("ssim", "float", "SSIM"),
                   ("psnr", "float", "PSNR"), ("n", "int", "samples")))
    value = dagster_value(table)
    assert isinstance(value, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("eval_set", "string"), ("method", "string"), ("ssim", "float"), ("psnr", "float"), ("n", "int")]
    assert value.records == [dg.TableRecord({"eval_set": "basic", "method": "model", "ssim": 0.7071, "psnr": None,
                                             "n": 24})]
    assert isinstance(dagster_value([1, 2]), dg.JsonMetadataValue)  # a plain list stays JSON
