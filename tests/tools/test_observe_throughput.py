"""tools.observe_throughput: the variant specs it takes from the command line."""

import pytest

from tools.observe_throughput import parse_variant


def test_parse_variant_values_and_empty_override():
    assert parse_variant("after:") == ("after", {})
    name, over = parse_variant("before:integrator=sort,search=block,group=0,echo=8")
    assert name == "before"
    assert over == dict(integrator="sort", search="block", group=0, echo=8)


@pytest.mark.parametrize("spec", [":group=0", "x:group"])
def test_parse_variant_refuses_bad_specs(spec):
    with pytest.raises(ValueError, match="variant"):
        parse_variant(spec)
