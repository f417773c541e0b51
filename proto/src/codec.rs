//! The services' gRPC codec: prost's encoding, each message decoded from
//! one contiguous slice.
//!
//! tonic hands a decoder the message inside its receive buffer behind a
//! `Buf` whose every `advance` goes through `BytesMut`'s bookkeeping, and
//! prost advances once per key, varint and field: under ingest that
//! bookkeeping was a twentieth of the collector's instructions. The
//! message lies in one piece of that buffer, so it is decoded from the
//! slice (a `&[u8]` advances by moving a pointer) and skipped at once.
//! The bytes on the wire are prost's either way.
//!
//! The collector's `Ingest` server takes each message as its bytes
//! instead ([`ReceivedCodec`]), and decodes them itself (see
//! [`crate::received`]).

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::pb;
use crate::received::Received;

/// Encodes `T` and decodes `U` as `application/grpc+proto`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a `U` from the slice the message lies in.
#[derive(Debug, Clone)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let decoded = U::decode(buf.chunk());
            buf.advance(len);
            decoded
        } else {
            // Not in one piece (not seen from tonic 0.14): as prost does.
            U::decode(buf)
        };
        // A message that does not parse is an internal error in gRPC's
        // terms, as prost's own codec reports it.
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The collector's `Ingest` codec: answers encoded by prost, each agent
/// message taken as it came ([`Received`]).
#[derive(Debug, Clone, Default)]
pub struct ReceivedCodec;

impl tonic::codec::Codec for ReceivedCodec {
    type Encode = pb::CollectorMessage;
    type Decode = Received;
    type Encoder = ProstEncoder<pb::CollectorMessage>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

/// Takes a message's bytes out of the receive buffer (without copying).
#[derive(Debug, Clone, Default)]
pub struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        Ok(Some(Received(buf.copy_to_bytes(buf.remaining()))))
    }
}
