"""A DATABASE_URL whose option libpq cannot use is a configuration error (exit 78 naming the
variable), found before any server is tried; an unreachable server is not (it is waited out).
No server is needed: libpq refuses these values before it connects. (An option libpq does not
know, ``?bogusoption=1``, is refused earlier, when the settings are read.)"""

from __future__ import annotations

import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.runtime.boot import BootRefused, DatabaseUnreachable, check_once
from wordloom_outbox.settings import load_settings

PASSWORD = "n0tshown"


def settings_for(query: str):
    return load_settings({"DATABASE_URL": f"postgresql://svc:{PASSWORD}@127.0.0.1:1/db{query}",
                          "ELASTIC_URL": "http://127.0.0.1:1"})


@pytest.mark.parametrize("query", ["?sslmode=bogus", "?target_session_attrs=xyz",
                                   "?gssencmode=sometimes", "?channel_binding=maybe"])
def test_an_option_libpq_cannot_use_is_refused_with_78(query):
    with pytest.raises(BootRefused) as refused:
        check_once(settings_for(query), connect_timeout=2)
    assert refused.value.code == exitcodes.CONFIG
    assert refused.value.reason.startswith("DATABASE_URL=") and "is not valid" in refused.value.reason
    assert PASSWORD not in refused.value.reason


def test_an_unreachable_server_is_not_a_config_error():
    with pytest.raises(DatabaseUnreachable):
        check_once(settings_for("?sslmode=disable"), connect_timeout=2)
