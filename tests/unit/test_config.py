"""Config: environment names of the official SDK, merging without clobbering (Q3)."""

from __future__ import annotations

import pytest

from modelproxy import Config, ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (
        "AGENTRUN_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_ID", "AGENTRUN_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "AGENTRUN_SECURITY_TOKEN",
        "ALIBABA_CLOUD_SECURITY_TOKEN", "AGENTRUN_ACCOUNT_ID", "FC_ACCOUNT_ID",
        "AGENTRUN_REGION", "FC_REGION", "AGENTRUN_CONTROL_ENDPOINT", "AGENTRUN_DATA_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)


def test_env_names_and_fallbacks(monkeypatch):
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "ak2")
    monkeypatch.setenv("AGENTRUN_ACCESS_KEY_ID", "ak1")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "sk")
    monkeypatch.setenv("FC_ACCOUNT_ID", "123")
    monkeypatch.setenv("FC_REGION", "cn-shanghai")
    config = Config()
    assert config.get_access_key_id() == "ak1"
    assert config.get_access_key_secret() == "sk"
    assert config.get_account_id() == "123"
    assert config.get_region_id() == "cn-shanghai"
    assert config.get_control_endpoint() == "https://agentrun.cn-shanghai.aliyuncs.com"


def test_data_endpoint_uses_ram_host_only_with_credentials(monkeypatch):
    monkeypatch.setenv("AGENTRUN_ACCOUNT_ID", "123")
    assert Config().get_data_endpoint() == "https://123.agentrun-data.cn-hangzhou.aliyuncs.com"
    signed = Config(access_key_id="a", access_key_secret="b")
    assert signed.get_data_endpoint() == "https://123-ram.agentrun-data.cn-hangzhou.aliyuncs.com"
    local = Config(access_key_id="a", access_key_secret="b", data_endpoint="http://127.0.0.1:9/")
    assert local.get_data_endpoint() == "http://127.0.0.1:9"


def test_missing_account_id_is_a_clear_error():
    with pytest.raises(ConfigError, match="AGENTRUN_ACCOUNT_ID"):
        Config().get_data_endpoint()


def test_later_plain_config_does_not_clobber():
    explicit = Config(account_id="42", region_id="cn-beijing", timeout=5, headers={"a": "1"})
    merged = Config.with_configs(explicit, Config(), Config(headers={"b": "2"}))
    assert merged.get_account_id() == "42"
    assert merged.get_region_id() == "cn-beijing"
    assert merged.get_timeout_s() == 5
    assert merged.get_headers() == {"a": "1", "b": "2"}


def test_later_set_values_win():
    merged = Config.with_configs(Config(region_id="a", timeout=1), Config(region_id="b"))
    assert (merged.get_region_id(), merged.get_timeout_s()) == ("b", 1)


def test_plain_http_refused_for_cloud_hosts_only():
    assert Config(control_endpoint="http://emulator:8080").get_control_endpoint() == (
        "http://emulator:8080"
    )
    with pytest.raises(ConfigError, match="HTTPS-only"):
        Config(control_endpoint="http://agentrun.cn-hangzhou.aliyuncs.com").get_control_endpoint()
    assert Config(control_endpoint="example.com").get_control_endpoint() == "https://example.com"


def test_secrets_are_not_in_repr():
    text = repr(Config(access_key_id="AKID", access_key_secret="s3cr3t", api_key="k3y"))
    assert "s3cr3t" not in text
    assert "k3y" not in text
