// Status codes shared by every native layer. The binding maps each to a
// stable JS error code (see src/errors.ts); never renumber, only append.
#pragma once
#include <cstdint>

namespace dwcp {

enum class Status : uint8_t {
  kOk = 0,
  kInvalidArgument,   // caller broke an API precondition
  kTruncated,         // input ended inside a header or record
  kBadMagic,          // not an HDE frame
  kUnsupportedVersion,
  kHeaderChecksum,    // frame header CRC32C mismatch
  kPayloadChecksum,   // record stream CRC32C mismatch
  kCorrupt,           // structurally invalid record stream
  kPageSizeMismatch,  // frame page size differs from the decoder's
  kPageOutOfRange,    // page number outside the target region
  kLimitExceeded,     // a declared size is beyond the configured limits
  kUnknownCodec,
  kOutputTooSmall,
  kBusy,              // the object is in use by an asynchronous call
  kClosed,            // the object was closed
  kConnectionLost,    // every stream of a connection failed
  kProtocol,          // the peer broke the wire protocol
  kDeviceError,       // an RDMA device call failed (open, registration, queue pair)
  kUnavailable,       // what was asked for is not available here (RDMA: no device, or the peer declined)
};

// The last status, for tables over all of them.
constexpr Status kLastStatus = Status::kUnavailable;

const char* status_name(Status s);

}  // namespace dwcp
