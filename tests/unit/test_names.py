import pytest

from loraplane.errors import InvalidArgument
from loraplane.names import AdapterSpec, parse_adapter_spec, validate_adapter_name


@pytest.mark.parametrize("name", ["a", "acme-support", "v1.2_x", "0" * 63])
def test_legal_names_pass(name: str) -> None:
    assert validate_adapter_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "x/y", "Upper", "-lead", "a" * 64, "a..b", "sp ace", "é"])
def test_illegal_names_are_invalid_argument_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_adapter_name(name, field="spec.adapter_name")
    assert info.value.field == "spec.adapter_name"


def test_spec_parses_name_and_pinned_version() -> None:
    assert parse_adapter_spec("acme") == AdapterSpec("acme")
    assert parse_adapter_spec("acme@v12") == AdapterSpec("acme", 12)
    assert str(AdapterSpec("acme", 3)) == "acme@v3"


@pytest.mark.parametrize("text", ["acme@", "acme@v", "acme@v0", "acme@3", "acme@vX", "acme@v1@v2", "../x@v1"])
def test_malformed_references_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument, match="adapter"):
        parse_adapter_spec(text)
