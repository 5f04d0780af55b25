"""Integration-test harness: real servers on loopback, no mocks."""

from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX, FakeMXFactory, Received, start_mx_group

__all__ = ["FakeDNS", "FakeMX", "FakeMXFactory", "Received", "start_mx_group"]
