"""The JSON Schemas of ``schemas/`` are valid, self-consistent and agree with the codec."""
from __future__ import annotations

import json
from pathlib import Path

import fastjsonschema
import jsonschema
import orjson
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import streams
from streams import codec
from streams.margin.errors import ERROR_CODES

SCHEMAS = codec.SCHEMAS_DIR
FILES = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
PAYLOAD_FILES = [f for f in FILES if f != "common.schema.json"]
INPUTS = {topic: codec.SCHEMA_FILES[topic] for topic in codec.INPUT_TOPICS}
OUTPUTS = {topic: codec.SCHEMA_FILES[topic] for topic in codec.OUTPUT_TOPICS}


def _doc(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry().with_resources(
        (name, Resource.from_contents(_doc(name), default_specification=DRAFT7)) for name in FILES
    )


def _validator(name: str, registry: Registry) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_doc(name), registry=registry)


def _key_for(topic: str, value: dict) -> bytes:
    if topic == "mark-prices":
        return value["symbol"].encode()
    if topic == "risk-params":
        return (value["symbol"] if value["type"] == "instrument" else f"asset:{value['asset']}").encode()
    return value["account_id"].encode()


def test_every_topic_has_a_schema_file_and_the_readme_maps_it() -> None:
    assert set(codec.SCHEMA_FILES.values()) | {"common.schema.json"} == set(FILES)
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    for topic, fname in codec.SCHEMA_FILES.items():
        assert fname in readme, fname
        if topic != "replay":
            assert f"`{topic}`" in readme, topic


@pytest.mark.parametrize("name", FILES)
def test_schema_is_a_valid_draft7_schema(name: str) -> None:
    doc = _doc(name)
    assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(doc)
    # fastjsonschema (the codec's engine) compiles it too, refs inlined.
    if name != "common.schema.json":
        codec.schema_validator(name)
        codec.schema_validator(name, strict=True)


@pytest.mark.parametrize("name", FILES)
def test_every_ref_resolves(name: str, registry: Registry) -> None:
    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for k, v in node.items():
                if k not in ("examples", "enum", "const"):
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    resolver = registry.resolver(base_uri=name)
    for ref in refs(_doc(name)):
        resolver.lookup(ref)  # raises when unresolvable


@pytest.mark.parametrize("name", PAYLOAD_FILES)
def test_examples_validate_with_jsonschema_and_the_compiled_validator(name: str, registry: Registry) -> None:
    doc = _doc(name)
    examples = doc.get("examples")
    assert examples, f"{name} has no examples"
    validator = _validator(name, registry)
    compiled = codec.schema_validator(name)
    for example in examples:
        errors = sorted(validator.iter_errors(example), key=str)
        assert not errors, f"{name}: {errors[0].message}"
        compiled(example)


@pytest.mark.parametrize("name", sorted(OUTPUTS.values()))
def test_output_examples_pass_the_strict_variant(name: str) -> None:
    strict = codec.schema_validator(name, strict=True)
    for example in _doc(name)["examples"]:
        strict(example)


@pytest.mark.parametrize("topic", sorted(OUTPUTS))
def test_outputs_are_open_but_the_strict_variant_is_closed(topic: str) -> None:
    example = dict(_doc(codec.SCHEMA_FILES[topic])["examples"][0])
    example["added_in_v1_1"] = "x"
    codec.schema_validator(topic)(example)  # the published schema accepts new fields
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        codec.schema_validator(topic, strict=True)(example)
    nested = json.loads(json.dumps(_doc(codec.SCHEMA_FILES[topic])["examples"][0]))
    nested["cause"]["extra"] = 1
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        codec.schema_validator(topic, strict=True)(nested)


@pytest.mark.parametrize("topic", sorted(INPUTS))
def test_every_input_example_decodes(topic: str) -> None:
    for example in _doc(INPUTS[topic])["examples"]:
        raw = orjson.dumps(example)
        event = codec.decode(topic, _key_for(topic, example), raw)
        assert event.topic == topic


def test_input_schemas_are_open_at_every_level() -> None:
    def check(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties", True) is not False, where
            for k, v in node.items():
                if k != "examples":
                    check(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                check(v, f"{where}/{i}")

    for name in INPUTS.values():
        check(_doc(name), name)


def test_dead_letter_error_enum_is_the_contract_list_in_order() -> None:
    assert tuple(_doc("common.schema.json")["definitions"]["errorCode"]["enum"]) == ERROR_CODES


def test_output_decimals_have_no_exponent_trailing_zero_or_negative_zero(registry: Registry) -> None:
    v = _validator("common.schema.json", registry)
    schema = {"$ref": "common.schema.json#/definitions/outDecimal"}
    check = jsonschema.Draft7Validator(schema, registry=registry)
    del v
    for good in ["0", "1", "-1", "0.5", "-0.000123", "123456789.987654321", "10", "100"]:
        assert check.is_valid(good), good
    for bad in ["-0", "1.0", "1.50", "1e5", "01", ".5", "+1", "", "1.", "0.0", "NaN", 1]:
        assert not check.is_valid(bad), bad


@pytest.mark.parametrize(
    ("definition", "good", "bad"),
    [
        ("decimal", ["0", "-0", "-1.5", "12", "0.000000000000000001", 1, -2.5], ["1e5", "+1", "01", ".5", "1.", "", " 1", "0.0000000000000000001", "NaN", True, None]),
        ("positiveDecimal", ["1", "0.001", "0.000000000000000001", 3, 0.5], ["0", "-0", "0.000", "-1", 0, -1, "1e-3", None]),
        ("nonNegativeDecimal", ["0", "-0", "-0.00", "1.5", 0, 2], ["-1", "-0.1", -1, None]),
        ("haircut", ["0", "0.05", "0.999999999999999999", "-0", 0, 0.5], ["1", "1.0", "-0.5", 1, 1.5, -0.1]),
        ("ts", [0, 1717000000000, 9223372036854775807], [-1, 9223372036854775808, "1", True, None]),
        ("id", ["A1", "x"], ["", 1, None]),
    ],
)
def test_common_types(definition: str, good: list, bad: list, registry: Registry) -> None:
    check = jsonschema.Draft7Validator({"$ref": f"common.schema.json#/definitions/{definition}"}, registry=registry)
    compiled = codec._compiled(f"common.schema.json#/definitions/{definition}", "plain")
    for value in good:
        assert check.is_valid(value), (definition, value)
        compiled(value)
    for value in bad:
        assert not check.is_valid(value), (definition, value)
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            compiled(value)


def test_risk_params_oneof_takes_each_example_exactly_once(registry: Registry) -> None:
    doc = _doc("risk-params.schema.json")
    for example in doc["examples"]:
        branch = {"$ref": f"risk-params.schema.json#/definitions/{example['type']}"}
        other = {"$ref": "risk-params.schema.json#/definitions/" + ("asset" if example["type"] == "instrument" else "instrument")}
        assert jsonschema.Draft7Validator(branch, registry=registry).is_valid(example)
        assert not jsonschema.Draft7Validator(other, registry=registry).is_valid(example)


def test_seed_file_lines_are_risk_params_payloads(registry: Registry) -> None:
    path = Path(streams.__file__).parent / "data" / "risk_params.jsonl"
    validator = _validator("risk-params.schema.json", registry)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert set(line) == {"key", "value"}
        assert not list(validator.iter_errors(line["value"]))
    loaded = codec.load_risk_params_file(path)
    assert [k.decode() for k, _ in loaded] == [line["key"] for line in lines]
    keys = {k.decode() for k, _ in loaded}
    assert {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BTCUSD", "ETHUSD", "asset:BTC", "asset:ETH", "asset:SOL"} <= keys
