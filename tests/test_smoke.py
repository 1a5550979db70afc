from helpers import pool_config


def test_acquire_returns_first_member(backend):
    coord = backend.coordinator(pool_config(3))
    sel = coord.pool("p").acquire()
    assert sel.member.id == "k0"
    assert not sel.degraded
