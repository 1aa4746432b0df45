//! Tensors crossing the plugin boundary.
//!
//! Host and plugins load the same libtorch, so a tensor crosses as the raw libtorch handle.
//! Ownership rules:
//! - [`TensorRef`] is *borrowed*: the sender keeps the tensor alive for the call; the receiver
//!   may take [`TensorRef::to_tensor`], a shallow clone (new handle, shared storage) that it owns.
//! - [`TensorBox`] is *owned*: the sender gives its handle away ([`TensorBox::new`] forgets the
//!   Rust wrapper); the receiver takes it back with [`TensorBox::into_tensor`]. Dropping an
//!   unclaimed box frees the handle, so an error path never leaks.
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::StableAbi;
use tch::Tensor;

/// A borrowed libtorch tensor handle, valid for `'a`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy)]
#[sabi(unsafe_opaque_fields)]
pub struct TensorRef<'a> {
    ptr: *mut c_void,
    _borrow: PhantomData<&'a Tensor>,
}

impl<'a> TensorRef<'a> {
    pub fn new(tensor: &'a Tensor) -> Self {
        Self {
            ptr: tensor.as_ptr() as *mut c_void,
            _borrow: PhantomData,
        }
    }

    /// A shallow clone the caller owns; the storage is shared with the sender's tensor.
    pub fn to_tensor(&self) -> Tensor {
        // SAFETY: the sender guarantees the handle lives for 'a; at_shallow_clone makes a new one.
        unsafe { Tensor::clone_from_ptr(self.ptr as *mut torch_sys::C_tensor) }
    }
}

/// An owned libtorch tensor handle, handed from one side of the boundary to the other.
#[repr(transparent)]
#[derive(StableAbi)]
#[sabi(unsafe_opaque_fields)]
pub struct TensorBox {
    ptr: *mut c_void,
}

impl TensorBox {
    pub fn new(tensor: Tensor) -> Self {
        let mut tensor = tensor;
        let ptr = tensor.as_mut_ptr() as *mut c_void;
        std::mem::forget(tensor);
        Self { ptr }
    }

    pub fn into_tensor(self) -> Tensor {
        let ptr = self.ptr;
        std::mem::forget(self);
        // SAFETY: the handle was produced by `TensorBox::new` and its ownership moves here.
        unsafe { Tensor::from_ptr(ptr as *mut torch_sys::C_tensor) }
    }

    pub fn borrow(&self) -> TensorRef<'_> {
        TensorRef {
            ptr: self.ptr,
            _borrow: PhantomData,
        }
    }
}

impl Drop for TensorBox {
    fn drop(&mut self) {
        // SAFETY: an unclaimed box still owns its handle.
        drop(unsafe { Tensor::from_ptr(self.ptr as *mut torch_sys::C_tensor) });
    }
}
