import pickle

import torch

from liftplus.data.buffers import ReusedBuffers

SHAPE = (4, 3, 8, 8)


def test_a_released_batch_is_reused():
    pool = ReusedBuffers()
    first = pool.get(SHAPE)
    pointer = first.data_ptr()
    del first
    again = pool.get(SHAPE)
    assert again.data_ptr() == pointer
    assert again.shape == SHAPE and again.dtype == torch.float32


def test_a_held_batch_is_never_handed_out_again():
    pool = ReusedBuffers(limit=2)
    held = [pool.get(SHAPE).fill_(float(k)) for k in range(4)]
    assert len({t.data_ptr() for t in held}) == 4
    assert [t[0, 0, 0, 0].item() for t in held] == [0.0, 1.0, 2.0, 3.0]


def test_a_view_of_a_batch_keeps_it():
    pool = ReusedBuffers()
    batch = pool.get(SHAPE)
    corner = batch[:1, :1]
    pointer = batch.data_ptr()
    del batch
    assert pool.get(SHAPE).data_ptr() != pointer
    del corner


def test_a_batch_saved_for_backward_is_kept():
    pool = ReusedBuffers()
    weight = torch.ones(8, 2, requires_grad=True)
    batch = pool.get(SHAPE).fill_(1.0)
    loss = (batch @ weight).sum()
    pointer = batch.data_ptr()
    del batch
    assert pool.get(SHAPE).data_ptr() != pointer
    loss.backward()
    assert weight.grad[0, 0].item() == 4 * 3 * 8


def test_other_shapes_get_their_own_tensor():
    pool = ReusedBuffers()
    small = pool.get((2, 3, 8, 8))
    pointer = small.data_ptr()
    del small
    large = pool.get(SHAPE)
    assert large.shape == SHAPE and large.data_ptr() != pointer


def test_pickled_pool_starts_empty():
    pool = ReusedBuffers(limit=5)
    held = pool.get(SHAPE)
    copy = pickle.loads(pickle.dumps(pool))
    assert copy.limit == 5 and copy.tensors == []
    del held
