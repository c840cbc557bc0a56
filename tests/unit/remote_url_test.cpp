// The FUSE-free pieces of remote sources that need no server: URL display (no secrets), size
// options, which strings are URLs. Everything that talks to a server is in tests/remote.
#include <gtest/gtest.h>

#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/remote/remote.h"

namespace nemofs::remote {
namespace {

TEST(RemoteUrl, DisplayDropsQueryAndCredentials) {
  EXPECT_EQ(display_url("https://host/a/b.nemo?X-Amz-Signature=abc&token=t"), "https://host/a/b.nemo");
  EXPECT_EQ(display_url("https://user:secret@host/a.nemo"), "https://host/a.nemo");
  EXPECT_EQ(display_url("http://host/a.nemo#frag"), "http://host/a.nemo");
  EXPECT_EQ(display_url("s3://bucket/key"), "s3://bucket/key");
  // An '@' in the path is not a user part.
  EXPECT_EQ(display_url("hf://org/repo@v1/model.safetensors"), "hf://org/repo@v1/model.safetensors");
}

TEST(RemoteUrl, WhichSourcesAreUrls) {
  for (const char* u : {"http://h/x", "https://h/x", "s3://b/k", "hf://o/r"}) EXPECT_TRUE(is_remote_url(u)) << u;
  for (const char* p : {"/data/x.nemo", "x.nemo", "ftp://h/x", "file:///x", "s3:/b"}) EXPECT_FALSE(is_remote_url(p)) << p;
}

TEST(RemoteUrl, SizesWithSuffixes) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("4K"), 4096u);
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("4G"), 4ull << 30);
  EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size("1t"), 1ull << 40);
  EXPECT_THROW(parse_size(""), std::invalid_argument);
  EXPECT_THROW(parse_size("12Q"), std::invalid_argument);
  EXPECT_THROW(parse_size("x"), std::invalid_argument);
  EXPECT_THROW(parse_size("99999999999T"), std::invalid_argument);
}

TEST(RemoteUrl, MalformedUrlsAreOneLineErrors) {
  for (const char* u : {"s3://", "hf://org", "hf://org/@rev", "https://user:pw@127.0.0.1:9/x.nemo"}) {
    try {
      open_remote_checkpoint(u);
      ADD_FAILURE() << u << " opened";
    } catch (const SysError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("pw"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace nemofs::remote
