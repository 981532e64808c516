"""Test networks shared by the projection tests (built once per session; none of the tests runs a
new forward pass on them): fixtures ``fmnist_net``, ``alexnet_net``, ``zfnet_net``, ``vgg16_net``."""
import pytest
from projcases import make


def _net_fixture(name):
    @pytest.fixture(scope="session", name=f"{name}_net")
    def fixture():
        return make(name)
    return fixture


fmnist_net, alexnet_net, zfnet_net, vgg16_net = (_net_fixture(n) for n in ("fmnist", "alexnet", "zfnet", "vgg16"))
