"""``trainer_options.refused_options``: Lightning's refusal of an option is one line; a fault of code is not hidden."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.exceptions import MisconfigurationException

from cir_lightning.errors import CIRConfigError
from cir_lightning.trainer_options import refused_options


def test_a_refusal_naming_an_option_is_one_line_naming_it():
    with pytest.raises(CIRConfigError, match=r"^`trainer.max_steps`: Lightning refuses it: `max_steps` must be"):
        with refused_options():
            raise MisconfigurationException("`max_steps` must be -1 or >= 0, got -5")


def test_lightning_s_refusal_naming_no_option_is_still_one_line():
    with pytest.raises(CIRConfigError, match=r"^the trainer's options: Lightning refuses them: no GPU here$"):
        with refused_options():
            raise MisconfigurationException("no GPU here")


@pytest.mark.parametrize("fault", [TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
                                   ValueError("too many values to unpack")])
def test_a_type_or_value_error_naming_no_option_keeps_its_traceback(fault):
    """A plugin's bug raised while the trainer is made is not a user's option: it was shown as a refusal."""
    with pytest.raises(type(fault), match=str(fault).split("(")[0]):
        with refused_options():
            raise fault
