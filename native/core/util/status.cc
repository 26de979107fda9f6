#include "util/status.h"

namespace dwcp {

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk: return "OK";
    case Status::kInvalidArgument: return "INVALID_ARGUMENT";
    case Status::kTruncated: return "TRUNCATED";
    case Status::kBadMagic: return "BAD_MAGIC";
    case Status::kUnsupportedVersion: return "UNSUPPORTED_VERSION";
    case Status::kHeaderChecksum: return "HEADER_CHECKSUM";
    case Status::kPayloadChecksum: return "PAYLOAD_CHECKSUM";
    case Status::kCorrupt: return "CORRUPT";
    case Status::kPageSizeMismatch: return "PAGE_SIZE_MISMATCH";
    case Status::kPageOutOfRange: return "PAGE_OUT_OF_RANGE";
    case Status::kLimitExceeded: return "LIMIT_EXCEEDED";
    case Status::kUnknownCodec: return "UNKNOWN_CODEC";
    case Status::kOutputTooSmall: return "OUTPUT_TOO_SMALL";
    case Status::kBusy: return "BUSY";
    case Status::kClosed: return "CLOSED";
    case Status::kConnectionLost: return "CONNECTION_LOST";
    case Status::kProtocol: return "PROTOCOL";
    case Status::kDeviceError: return "DEVICE_ERROR";
    case Status::kUnavailable: return "UNAVAILABLE";
  }
  return "UNKNOWN";
}

}  // namespace dwcp
